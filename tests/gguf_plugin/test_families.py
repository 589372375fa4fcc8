"""Every family llama.cpp writes: its GGUF mapping is current, and a GGUF file written by
llama.cpp's own converter from the family's golden fixture (tests/fixtures/gguf/, built by
tests/fixtures/build_gguf_fixtures.py) is the same model as the Hugging Face folder it came
from: logits to 1e-4 against transformers and against modelkit on the folder, the same greedy
tokens, cached decoding equal to the full forward, and the file's tokenizer equal to the
folder's.

Where a fixture exercises a setting the GGUF format or llama.cpp's loader cannot carry (a
sliding window llama.cpp's llama, qwen2 and starcoder2 do not have, a layer pattern or query
scale its loader fixes in code), the file is the model llama.cpp runs: it then equals the folder
with that setting as llama.cpp has it (:data:`AS_LLAMA_CPP_READS_IT`), and differs from the
folder as it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import modelkit
from conftest import ATOL, FIXTURES, copy_fixture, edit_config, fixture_path, load_cached, max_abs, reference
from modelkit_gguf import derive
from modelkit_gguf.families import ROWS

GGUF = FIXTURES / "gguf"

# converted fixture (gguf/NAME.gguf, from the fixture folder NAME) -> the GGUF mapping serving it
CONVERTED = {
    "llama_gqa": "llama-gguf", "llama_mqa_tied": "llama-gguf", "llama_biases": "llama-gguf",
    "llama3_rope_headdim": "llama-gguf", "llama_linear_rope": "llama-gguf",
    "mistral_window": "llama-gguf",  # the converter writes Mistral as llama
    "qwen2": "qwen2-gguf", "qwen2_window": "qwen2-gguf", "qwen3": "qwen3-gguf", "smollm3": "smollm3-gguf",
    "gemma": "gemma-gguf", "gemma2": "gemma2-gguf", "gemma3_text": "gemma3-gguf",
    "phi3": "phi3-gguf", "phi": "phi-gguf", "olmo": "olmo-gguf", "olmo2": "olmo2-gguf",
    "stablelm": "stablelm-gguf", "gpt_neox": "gpt_neox-gguf", "starcoder2": "starcoder2-gguf",
    "cohere": "cohere-gguf", "cohere2": "cohere2-gguf", "gpt_bigcode": "gpt_bigcode-gguf",
    "gpt2": "gpt2-gguf", "bloom": "bloom-gguf", "falcon_7b": "falcon-gguf", "falcon_40b": "falcon-gguf",
    "mamba2": "mamba2-gguf", "mamba2_tied": "mamba2-gguf", "granite3": "granite3-gguf",
    "qwen3_moe_sparse": "qwen3_moe-gguf", "granitemoe": "granitemoe-gguf",
    "mixtral": "mixtral-gguf",  # written as llama, with llama.expert_count
    "mamba": "mamba-gguf", "lfm2_hub_config": "lfm2-gguf",
    "gh_hybrid": "granite-gguf", "gh_all_mamba": "granite-gguf", "gh_moe": "granite-gguf",
    # an attention-only Granite 4.0-H is written as a dense Granite (arch "granite")
    "gh_attention_only": "granite3-gguf",
}

# fixture -> its config.json as llama.cpp runs the converted file (what the file cannot say)
AS_LLAMA_CPP_READS_IT: dict[str, dict[str, object]] = {
    # llama.cpp's llama, qwen2 and starcoder2 have no sliding window; the converter drops it
    "mistral_window": {"sliding_window": None}, "mixtral": {"sliding_window": None},
    "qwen2_window": {"use_sliding_window": False},
    "starcoder2": {"sliding_window": None},
    # llama.cpp's smollm3 loader fixes a NoPE layer every 4 (n_no_rope_layer_step)
    "smollm3": {"no_rope_layer_interval": 4, "no_rope_layers": [1, 1, 1, 0]},
    # llama.cpp's gemma2 scales queries by 1/sqrt(head size) (the fixture's query_pre_attn_scalar is 8)
    "gemma2": {"query_pre_attn_scalar": 16},
    # no window pattern in the file: Gemma 3's default period 6, Cohere 2's 4
    "gemma3_text": {"layer_types": ["sliding_attention"] * 5 + ["full_attention"]},
    "cohere2": {"layer_types": ["sliding_attention"] * 3 + ["full_attention"]},
}

_cache: dict[str, object] = {}


def gguf_model(name: str):  # type: ignore[no-untyped-def]
    if name not in _cache:
        _cache[name] = modelkit.load(GGUF / f"{name}.gguf")
    return _cache[name]


@pytest.mark.parametrize("family", ROWS, ids=lambda f: f.name)
def test_mapping_is_current(family) -> None:  # type: ignore[no-untyped-def]
    assert derive.mapping_file(family).read_text(encoding="utf-8") == derive.render(family), \
        f"run `python -m modelkit_gguf.derive` ({family.mapping}.yaml is out of date)"


def test_every_converted_fixture_is_tested_and_every_family_has_one() -> None:
    assert sorted(p.stem for p in GGUF.glob("*.gguf")) == sorted(CONVERTED)
    assert set(CONVERTED.values()) == {family.name for family in ROWS}


def folder_model(name: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """modelkit on the fixture folder, as llama.cpp reads the converted file."""
    if name not in AS_LLAMA_CPP_READS_IT:
        return load_cached(name)
    folder = copy_fixture(name, tmp_path / name)
    edit_config(folder, **AS_LLAMA_CPP_READS_IT[name])
    return modelkit.load(folder)


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_converted_file_is_the_folder_it_came_from(name: str, tmp_path: Path) -> None:
    model, folder = gguf_model(name), folder_model(name, tmp_path)
    assert model.name == CONVERTED[name]
    ids, ref = reference(name)
    logits = model.forward(ids)
    assert max_abs(logits, folder.forward(ids)) < ATOL
    if name in AS_LLAMA_CPP_READS_IT:  # what the file cannot carry changes the model
        assert max_abs(logits, ref) > 10 * ATOL
    else:
        assert max_abs(logits, ref) < ATOL
    prompt = [int(t) for t in ids[:6]]
    assert model.generate(prompt, max_new_tokens=8, temperature=0.0) == \
        folder.generate(prompt, max_new_tokens=8, temperature=0.0)


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_cached_decoding_equals_the_full_forward(name: str) -> None:
    model = gguf_model(name)
    ids, _ = reference(name)
    full = model.forward(ids)
    cache = model.make_cache()
    steps = [model.forward(ids[:5], cache)] + [model.forward(ids[t:t + 1], cache) for t in range(5, len(ids))]
    assert max_abs(np.concatenate(steps), full) < ATOL


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_tokenizer_of_the_file_is_the_folders(name: str) -> None:
    cases = json.loads((FIXTURES / "tokenizer_ref.json").read_text(encoding="utf-8"))["cases"]
    ours, theirs = gguf_model(name).tokenizer, load_cached(name).tokenizer
    for case in cases:
        assert ours.encode(case["text"], add_special_tokens=False) == case["ids"], case["text"]
        assert theirs.encode(case["text"], add_special_tokens=False) == case["ids"]


def test_fixture_folders_exist() -> None:
    for name in CONVERTED:
        assert (fixture_path(name) / "config.json").is_file()
        assert Path(GGUF / f"{name}.gguf").stat().st_size < 500_000

"""Every family llama.cpp writes: its GGUF mapping is current, and a GGUF file written by
llama.cpp's own converter from the family's golden fixture (tests/fixtures/gguf/, built by
tests/fixtures/build_gguf_fixtures.py) is the same model as the Hugging Face folder it came
from: logits to 1e-4 against transformers and against modelkit on the folder, the same greedy
tokens, cached decoding equal to the full forward, and the file's tokenizer equal to the
folder's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import modelkit
from conftest import ATOL, FIXTURES, fixture_path, load_cached, max_abs, reference
from modelkit_gguf import derive
from modelkit_gguf.families import FAMILIES

GGUF = FIXTURES / "gguf"

# converted fixture (gguf/NAME.gguf, from the fixture folder NAME) -> the GGUF mapping serving it
CONVERTED = {
    "gh_hybrid": "granite-gguf",
    "gh_all_mamba": "granite-gguf",
    "gh_moe": "granite-gguf",
    # an attention-only Granite 4.0-H is written as a dense Granite (arch "granite")
    "gh_attention_only": "granite3-gguf",
}

_cache: dict[str, object] = {}


def gguf_model(name: str):  # type: ignore[no-untyped-def]
    if name not in _cache:
        _cache[name] = modelkit.load(GGUF / f"{name}.gguf")
    return _cache[name]


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_mapping_is_current(arch: str) -> None:
    family = FAMILIES[arch]
    assert derive.mapping_file(family).read_text(encoding="utf-8") == derive.render(family), \
        f"run `python -m modelkit_gguf.derive` ({family.mapping}.yaml is out of date)"


def test_every_converted_fixture_is_tested() -> None:
    assert sorted(p.stem for p in GGUF.glob("*.gguf")) == sorted(CONVERTED)


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_converted_file_is_the_folder_it_came_from(name: str) -> None:
    model = gguf_model(name)
    assert model.name == CONVERTED[name]
    ids, ref = reference(name)
    logits = model.forward(ids)
    assert max_abs(logits, ref) < ATOL
    assert max_abs(logits, load_cached(name).forward(ids)) < ATOL
    prompt = [int(t) for t in ids[:6]]
    assert model.generate(prompt, max_new_tokens=8, temperature=0.0) == \
        load_cached(name).generate(prompt, max_new_tokens=8, temperature=0.0)


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_cached_decoding_equals_the_full_forward(name: str) -> None:
    model = gguf_model(name)
    ids, _ = reference(name)
    full = model.forward(ids)
    cache = model.make_cache()
    steps = [model.forward(ids[:5], cache)] + [model.forward(ids[t:t + 1], cache) for t in range(5, len(ids))]
    assert max_abs(np.concatenate(steps), full) < 1e-5


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
        assert Path(GGUF / f"{name}.gguf").stat().st_size < 400_000

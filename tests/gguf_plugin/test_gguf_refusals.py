"""What the GGUF mappings refuse, on files llama.cpp's converter wrote: every check a family's
row adds (partial rotary where the family's blocks rotate whole heads, metadata a family does not
implement) fires, with one line naming the key; and every such check is exercised here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gguf import Keys

import modelkit
from conftest import FIXTURES
from gguf_files import rewrite_gguf
from modelkit_gguf import derive
from modelkit_gguf.families import FAMILIES, ROWS
from modelkit_gguf.fragments import FULL_ROTARY

GGUF = FIXTURES / "gguf"

# family -> a converted fixture of it (tests/fixtures/gguf/)
FIXTURE_OF = {"llama": "llama_gqa", "qwen2": "qwen2", "qwen3": "qwen3", "smollm3": "smollm3", "gemma": "gemma",
              "gemma2": "gemma2", "gemma3": "gemma3_text", "olmo": "olmo", "olmo2": "olmo2",
              "starcoder2": "starcoder2", "command-r": "cohere", "cohere2": "cohere2", "falcon": "falcon_7b",
              "granite": "granite3", "granitehybrid": "gh_hybrid", "phi2": "phi", "phi3": "phi3",
              "stablelm": "stablelm", "gptneox": "gpt_neox", "starcoder": "gpt_bigcode", "gpt2": "gpt2",
              "bloom": "bloom", "mamba2": "mamba2",
              "qwen3moe": "qwen3_moe_sparse", "granitemoe": "granitemoe", "mamba": "mamba",
              "lfm2": "lfm2_hub_config"}

FULL_ROTARY_FAMILIES = sorted(arch for arch, f in FAMILIES.items() if FULL_ROTARY in f.yaml)

# (family, metadata changes, the refusal it must meet)
REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    *[(arch, {Keys.Rope.DIMENSION_COUNT: 2}, "rope.dimension_count differs from the head size (partial rotary "
                                                "is not supported)") for arch in FULL_ROTARY_FAMILIES],
    ("granitehybrid", {Keys.Rope.SCALING_FINETUNED: True, Keys.Rope.DIMENSION_COUNT: 4},
     "rope.dimension_count differs from the head size (partial rotary is not supported)"),
    ("granite", {Keys.Rope.SCALING_FINETUNED: False}, "granite.rope.scaling.finetuned is false"),
    ("mamba", {Keys.SSM.DT_B_C_RMS: True}, "mamba.ssm.dt_b_c_rms is true (Falcon-Mamba's RMS norms"),
    ("gemma3", {Keys.LLM.ATTN_LOGIT_SOFTCAPPING: 50.0}, "gemma3.attn_logit_softcapping is set"),
    ("gemma3", {Keys.Attention.VALUE_LENGTH: 8}, "gemma3.attention.value_length differs from key_length"),
]


def test_every_family_has_a_converted_fixture() -> None:
    assert sorted(FIXTURE_OF) == sorted(FAMILIES)


@pytest.mark.parametrize("arch, changes, message", REFUSALS, ids=lambda v: v if isinstance(v, str) else "")
def test_metadata_a_mapping_does_not_implement_is_refused(tmp_path: Path, arch: str, changes: dict[str, Any],
                                                          message: str) -> None:
    meta = {key.format(arch=arch): value for key, value in changes.items()}
    path = rewrite_gguf(GGUF / f"{FIXTURE_OF[arch]}.gguf", tmp_path / "m.gguf", meta=meta)
    with pytest.raises(modelkit.ConfigError) as info:
        modelkit.inspect(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_every_refusal_of_a_gguf_mapping_is_exercised() -> None:
    import yaml

    tested = {(arch, message) for arch, _, message in REFUSALS}
    for family in ROWS:
        arch = family.arch
        checks = yaml.safe_load(derive.render(family)).get("checks") or []
        for check in checks:
            assert any(a == arch and m in check["message"] for a, m in tested), \
                f"{family.name}: no test meets the refusal {check['message']!r}"


def test_a_family_written_under_another_architecture_refuses_as_its_own(tmp_path: Path) -> None:
    """Mixtral's mapping (a llama file with experts) has llama's checks, met on its own file."""
    path = rewrite_gguf(GGUF / "mixtral.gguf", tmp_path / "m.gguf", meta={"llama.rope.dimension_count": 2})
    with pytest.raises(modelkit.ConfigError) as info:
        modelkit.inspect(path)
    assert "llama.rope.dimension_count differs from the head size (partial rotary is not supported)" in str(info.value)
    assert str(path) in str(info.value) and "\n" not in str(info.value)

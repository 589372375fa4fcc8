"""Granite 4.0-H from GGUF (llama.cpp's ``granitehybrid``): the metadata llama.cpp writes for it,
the conversions its converter applies and their inverses, and what is refused. The files are
tests/fixtures/gguf/gh_*.gguf, written by llama.cpp's convert_hf_to_gguf.py; that they equal
their Hugging Face folders is tested in test_families.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFValueType, Keys

import modelkit
from conftest import ATOL, FIXTURES, max_abs, read_tensors, reference
from gguf_files import rewrite_gguf
from modelkit.errors import CheckpointError, ConfigError, MappingError
from modelkit_gguf.source import GGUFSource
from modelkit_gguf.transforms import undo_neg_exp

GGUF = FIXTURES / "gguf"


def key(template: str, arch: str = "granitehybrid") -> str:
    return template.format(arch=arch)


def config(name: str) -> dict[str, Any]:
    src = GGUFSource.open(GGUF / f"{name}.gguf")
    try:
        return src.config()
    finally:
        src.close()


# ---- metadata -> config.json ------------------------------------------------------------------


def test_hybrid_config_is_the_folders() -> None:
    cfg = config("gh_hybrid")
    assert cfg["model_type"] == "granitemoehybrid" and cfg["architectures"] == ["GraniteMoeHybridForCausalLM"]
    # head_count_kv [0, 2, 0, 0]: layers with no KV heads are Mamba2 layers
    assert cfg["gguf"]["attention"]["head_count_kv"] == [0, 2, 0, 0]
    assert cfg["layer_types"] == ["mamba", "attention", "mamba", "mamba"]
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (4, 2)
    # the ssm.* keys: conv taps, state size, groups; time_step_rank is the number of Mamba heads
    assert (cfg["mamba_d_conv"], cfg["mamba_d_state"], cfg["mamba_n_groups"], cfg["mamba_n_heads"]) == (4, 16, 2, 8)
    assert (cfg["mamba_expand"], cfg["mamba_d_head"]) == (2, 8)  # ssm.inner_size 64 over hidden 32, heads 8
    assert (cfg["mamba_conv_bias"], cfg["mamba_proj_bias"]) == (True, False)
    assert cfg["position_embedding_type"] == "nope"  # rope.scaling.finetuned false
    assert (cfg["shared_intermediate_size"], cfg["num_local_experts"]) == (48, 0)
    assert (cfg["embedding_multiplier"], cfg["residual_multiplier"], cfg["logits_scaling"]) == (12.0, 0.25, 3.0)
    assert cfg["attention_multiplier"] == pytest.approx(0.1)
    assert cfg["hidden_act"] == "silu" and cfg["tie_word_embeddings"] is True


def test_moe_config() -> None:
    cfg = config("gh_moe")
    assert cfg["layer_types"] == ["mamba", "attention", "mamba", "attention"]
    assert (cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["intermediate_size"]) == (4, 2, 24)
    assert cfg["shared_intermediate_size"] == 48


def test_all_mamba_config() -> None:
    cfg = config("gh_all_mamba")
    assert cfg["layer_types"] == ["mamba"] * 4 and "num_key_value_heads" not in cfg


def test_attention_only_is_a_dense_granite() -> None:
    # GraniteHybridModel writes a Granite 4.0-H without Mamba layers as arch "granite"; its
    # MLP is the shared one, whose size is expert_shared_feed_forward_length (48), not the
    # unused feed_forward_length (64) of the Hugging Face config
    cfg = config("gh_attention_only")
    assert cfg["model_type"] == "granite" and cfg["architectures"] == ["GraniteForCausalLM"]
    assert cfg["gguf"]["feed_forward_length"] == 64 and cfg["intermediate_size"] == 48
    assert cfg["num_key_value_heads"] == 2  # a per-layer array [2, 2, 2, 2]
    assert modelkit.load(GGUF / "gh_attention_only.gguf", arch="granite3").name == "granite3-gguf"


def test_arch_granite_selects_the_gguf_mapping() -> None:
    assert modelkit.load(GGUF / "gh_hybrid.gguf", arch="granite").name == "granite-gguf"


def test_granite_defaults_when_the_scales_are_absent(tmp_path: Path) -> None:
    # llama.cpp: no attention.scale (or 0) means 1/sqrt(head size), the others mean 1
    path = rewrite_gguf(GGUF / "gh_hybrid.gguf", tmp_path / "m.gguf", meta={
        key(Keys.Attention.SCALE): None, key(Keys.LLM.LOGIT_SCALE): 0.0, key(Keys.LLM.EMBEDDING_SCALE): None})
    cfg = GGUFSource.open(path).config()
    assert cfg["attention_multiplier"] == pytest.approx(1 / np.sqrt(8))
    assert cfg["logits_scaling"] == 1.0 and cfg["embedding_multiplier"] == 1.0


# ---- the converter's changes to tensors, undone ----------------------------------------------


def test_tensors_come_back_to_the_folders_form() -> None:
    # each canonical tensor read from the GGUF equals the one read from the Hugging Face folder
    src, _, plan = modelkit.inspect(GGUF / "gh_moe.gguf")
    hf_src, _, hf_plan = modelkit.inspect(FIXTURES / "gh_moe")
    reader, hf_reader = modelkit.TensorReader(src), modelkit.TensorReader(hf_src)
    try:
        for canonical, planned in plan.tensors.items():
            got = reader.read(planned)
            want = hf_reader.read(hf_plan.tensors[canonical])
            assert got.shape == want.shape, canonical
            # A_log went through -exp and back: equal to float32 rounding
            tol = 1e-6 if canonical.endswith("A_log") else 0.0
            assert max_abs(got, want) <= tol, canonical
        assert sum(c.endswith(("experts.gate.weight", "experts.up.weight")) for c in plan.tensors) == 8
    finally:
        reader.close(), hf_reader.close(), src.close(), hf_src.close()


def test_undo_neg_exp_inverts_the_converter() -> None:
    a_log = np.log(np.random.default_rng(0).uniform(1, 16, 64)).astype(np.float32)
    stored = -np.exp(a_log)  # Mamba2Model.modify_tensors (in float32)
    back = undo_neg_exp(stored)
    assert back.dtype == np.float32
    np.testing.assert_array_max_ulp(-np.exp(back), stored, maxulp=1)  # the float32 log's rounding


def test_a_stored_a_that_is_not_negative_is_refused(tmp_path: Path) -> None:
    a = np.full((8, 1), -1.0, np.float32)
    a[3] = 0.5
    path = rewrite_gguf(GGUF / "gh_hybrid.gguf", tmp_path / "m.gguf", tensors={"blk.0.ssm_a": a})
    with pytest.raises(MappingError, match=r"layers.0.ssm.A_log: .*1 of 8 values are not negative"):
        modelkit.load(path)


def test_the_moe_block_joins_split_experts_once() -> None:
    model = modelkit.load(GGUF / "gh_moe.gguf")
    hf = read_tensors(FIXTURES / "gh_moe")
    block = model.layers[1].blocks["mlp"]
    np.testing.assert_array_equal(block.gate_up, hf["model.layers.1.block_sparse_moe.input_linear.weight"])


# ---- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("meta,error,message", [
    ({key(Keys.Attention.HEAD_COUNT_KV): [0, 2, 0]}, CheckpointError, "head_count_kv' holds 3 values for 4 layers"),
    ({key(Keys.Attention.HEAD_COUNT_KV): [0, 2, 4, 0]}, CheckpointError,
     "head_count_kv' differs between attention layers"),
    ({key(Keys.SSM.INNER_SIZE): 48}, CheckpointError, r"inner_size' \(48\) is not a multiple of the hidden size"),
    # time_step_rank is mamba_n_heads, which the granite mapping holds to at least 1
    ({key(Keys.SSM.TIME_STEP_RANK): (-1, GGUFValueType.INT32)}, ConfigError, "'mamba_n_heads' must be at least 1"),
    ({key(Keys.Rope.SCALING_FINETUNED): True, key(Keys.Rope.DIMENSION_COUNT): 4}, ConfigError,
     "partial rotary is not supported"),
])
def test_metadata_modelkit_cannot_follow_is_refused(tmp_path: Path, meta: dict[str, Any], error: type,
                                                     message: str) -> None:
    path = rewrite_gguf(GGUF / "gh_hybrid.gguf", tmp_path / "m.gguf", meta=meta)
    with pytest.raises(error, match=message) as info:
        modelkit.load(path)
    assert "\n" not in str(info.value)


def test_rope_on_in_a_hybrid_file_is_followed(tmp_path: Path) -> None:
    # Bamba-style files keep rotary positions on (rope.scaling.finetuned true): the attention
    # layer then rotates, so the logits move away from the no-position folder's
    path = rewrite_gguf(GGUF / "gh_hybrid.gguf", tmp_path / "m.gguf", meta={key(Keys.Rope.SCALING_FINETUNED): True})
    model = modelkit.load(path)
    assert model.config["position_embedding_type"] == "rope"
    assert model.layers[1].blocks["attn"].options["positions"] == "rope"
    ids, ref = reference("gh_hybrid")
    assert max_abs(model.forward(ids), ref) > ATOL


def test_dense_granite_without_rope_is_refused(tmp_path: Path) -> None:
    path = rewrite_gguf(GGUF / "gh_attention_only.gguf", tmp_path / "m.gguf",
                        meta={key(Keys.Rope.SCALING_FINETUNED, "granite"): False})
    with pytest.raises(ConfigError, match="granite.rope.scaling.finetuned is false"):
        modelkit.load(path)

"""A new architecture without Python: Qwen2 (Llama plus q/k/v biases) written out in full as a
user YAML, used through ``mapping=``, ``--mapping FILE`` and the MODELKIT_MAPPINGS folder, where
it wins over the shipped qwen2 mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ATOL, cli_env, fixture_path, max_abs, reference, run_cli

import modelkit
from modelkit.cli import main as cli_main

QWEN2_YAML = """\
# Qwen2 (Qwen2ForCausalLM): Llama's layout with biases on the q, k and v projections.
modelkit_mapping: 1
name: qwen2
description: Qwen2 family, written as a user mapping
match:
  model_type: [qwen2]
  architectures: [Qwen2ForCausalLM]

config:
  vocab_size: {from: vocab_size, type: int, min: 1}
  hidden_size: {from: hidden_size, type: int, min: 1}
  num_layers: {from: num_hidden_layers, type: int, min: 1}
  num_heads: {from: num_attention_heads, type: int, min: 1}
  num_kv_heads: {from: num_key_value_heads, type: int, min: 1, derive: num_heads}
  head_dim: {from: head_dim, type: int, min: 1, derive: hidden_size // num_heads}
  intermediate_size: {from: intermediate_size, type: int, min: 1}
  rms_norm_eps: {from: rms_norm_eps, type: float, default: 1.0e-6}
  rope_theta: {from: [rope_theta, rope_parameters.rope_theta], type: float, default: 10000.0}
  rope_scaling: {from: [rope_scaling, rope_parameters], type: dict, default: null}
  hidden_act: {from: hidden_act, type: str, default: silu}
  tie_word_embeddings: {from: tie_word_embeddings, type: bool, default: false}

checks:
  - {expr: "num_heads % num_kv_heads == 0", message: "num_attention_heads must be a multiple of num_key_value_heads"}

model:
  final_norm: {kind: rmsnorm, eps: $rms_norm_eps}
  tie_head: $tie_word_embeddings

layers:
  count: $num_layers
  layout: sequential
  blocks:
    attn_norm: {kind: rmsnorm, eps: $rms_norm_eps}
    attn: {kind: attention, positions: rope, rope_theta: $rope_theta, rope_scaling: $rope_scaling}
    mlp_norm: {kind: rmsnorm, eps: $rms_norm_eps}
    mlp: {kind: gated_mlp, intermediate_size: $intermediate_size, activation: $hidden_act}
  flow:
    - [attn_norm, attn]
    - [mlp_norm, mlp]

weights:
  embed.weight: model.embed_tokens.weight
  final_norm.weight: model.norm.weight
  head.weight: lm_head.weight
  layers.{i}.attn_norm.weight: model.layers.{i}.input_layernorm.weight
  layers.{i}.attn.q.weight: model.layers.{i}.self_attn.q_proj.weight
  layers.{i}.attn.k.weight: model.layers.{i}.self_attn.k_proj.weight
  layers.{i}.attn.v.weight: model.layers.{i}.self_attn.v_proj.weight
  layers.{i}.attn.o.weight: model.layers.{i}.self_attn.o_proj.weight
  # the difference from Llama: q/k/v biases, always present
  layers.{i}.attn.q.bias: model.layers.{i}.self_attn.q_proj.bias
  layers.{i}.attn.k.bias: model.layers.{i}.self_attn.k_proj.bias
  layers.{i}.attn.v.bias: model.layers.{i}.self_attn.v_proj.bias
  layers.{i}.mlp_norm.weight: model.layers.{i}.post_attention_layernorm.weight
  layers.{i}.mlp.gate.weight: model.layers.{i}.mlp.gate_proj.weight
  layers.{i}.mlp.up.weight: model.layers.{i}.mlp.up_proj.weight
  layers.{i}.mlp.down.weight: model.layers.{i}.mlp.down_proj.weight

ignore:
  - model.rotary_emb.inv_freq
"""

QWEN2 = fixture_path("qwen2")


@pytest.fixture
def qwen2_yaml(tmp_path: Path) -> Path:
    folder = tmp_path / "user_mappings"
    folder.mkdir()
    path = folder / "qwen2.yaml"
    path.write_text(QWEN2_YAML)
    return path


def _my_llama(folder: Path) -> Path:
    """A user mapping that claims Llama checkpoints (biases optional, as in Llama)."""
    text = (QWEN2_YAML.replace("name: qwen2", "name: my_llama")
            .replace("model_type: [qwen2]", "model_type: [llama]")
            .replace("architectures: [Qwen2ForCausalLM]", "architectures: [LlamaForCausalLM]"))
    for part in "qkv":
        text = text.replace(f"layers.{{i}}.attn.{part}.bias: model.layers.{{i}}.self_attn.{part}_proj.bias",
                            f'layers.{{i}}.attn.{part}.bias: {{from: "model.layers.{{i}}.self_attn.'
                            f'{part}_proj.bias", optional: true}}')
    path = folder / "my_llama.yaml"
    path.write_text(text)
    return path


def test_qwen2_ships_and_the_user_mapping_is_another_file() -> None:
    assert "qwen2" in modelkit.architectures()
    model = modelkit.load(QWEN2)
    assert model.name == "qwen2" and model.mapping_file.endswith("mappings/qwen2.yaml")


def test_mapping_argument(qwen2_yaml: Path) -> None:
    ids, ref = reference("qwen2")
    model = modelkit.load(QWEN2, mapping=qwen2_yaml)
    assert model.name == "qwen2"
    assert model.mapping_file == str(qwen2_yaml)
    assert max_abs(model.forward(ids), ref) < ATOL
    # the biases are what makes it Qwen2: without them the numbers are off
    attn = model.layers[0].blocks["attn"]
    assert attn.b_qkv is not None and attn.b_o is None


def test_mapping_argument_is_used_as_given(qwen2_yaml: Path) -> None:
    # a llama checkpoint through the qwen2 file fails: its q/k/v biases are required
    with pytest.raises(modelkit.WeightMismatchError, match="q_proj.bias"):
        modelkit.load(fixture_path("llama_gqa"), mapping=qwen2_yaml)


def test_mappings_folder(qwen2_yaml: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MODELKIT_MAPPINGS", str(qwen2_yaml.parent))
    ids, ref = reference("qwen2")
    model = modelkit.load(QWEN2)
    assert model.name == "qwen2" and model.mapping_file == str(qwen2_yaml)
    assert max_abs(model.forward(ids), ref) < ATOL

    assert cli_main(["validate", "--model", str(QWEN2)]) == 0
    out = capsys.readouterr().out
    assert "architecture qwen2" in out and str(qwen2_yaml) in out and "MODELKIT_MAPPINGS" in out

    assert cli_main(["archs"]) == 0
    rows = capsys.readouterr().out.splitlines()
    qwen_rows = [r for r in rows if r.split()[0] == "qwen2"]
    assert str(qwen2_yaml) in qwen_rows[0] and "MODELKIT_MAPPINGS" in qwen_rows[0]
    assert rows.index(qwen_rows[0]) == 0  # user mappings come first: they take precedence
    assert len(qwen_rows) == 2 and "plugin core" in qwen_rows[1]  # the shipped one, shadowed


def test_mappings_folder_with_several_folders(qwen2_yaml: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("MODELKIT_MAPPINGS", os.pathsep.join([str(empty), str(qwen2_yaml.parent)]))
    assert modelkit.load(QWEN2).name == "qwen2"
    monkeypatch.setenv("MODELKIT_MAPPINGS", str(tmp_path / "not_a_folder"))
    with pytest.raises(modelkit.MappingError, match="MODELKIT_MAPPINGS"):
        modelkit.load(QWEN2)


def test_user_mapping_wins_over_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    folder = tmp_path / "maps"
    folder.mkdir()
    mine = _my_llama(folder)
    monkeypatch.setenv("MODELKIT_MAPPINGS", str(folder))
    ids, ref = reference("llama_gqa")
    model = modelkit.load(fixture_path("llama_gqa"))
    assert model.name == "my_llama" and model.mapping_file == str(mine)
    assert max_abs(model.forward(ids), ref) < ATOL
    # the shipped one stays reachable by name
    assert modelkit.load(fixture_path("llama_gqa"), arch="llama").name == "llama"

    assert cli_main(["validate", "--model", str(fixture_path("llama_gqa"))]) == 0
    out = capsys.readouterr().out
    assert "architecture my_llama" in out and str(mine) in out

    assert cli_main(["archs"]) == 0
    rows = capsys.readouterr().out.splitlines()
    mine_row = next(r for r in rows if r.split()[0] == "my_llama")
    llama_row = next(r for r in rows if r.split()[0] == "llama")
    assert str(mine) in mine_row and rows.index(mine_row) < rows.index(llama_row)


def test_user_mapping_with_a_shipped_name_shadows_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "maps"
    folder.mkdir()
    path = _my_llama(folder)
    path.write_text(path.read_text().replace("name: my_llama", "name: llama"))
    monkeypatch.setenv("MODELKIT_MAPPINGS", str(folder))
    model = modelkit.load(fixture_path("llama_gqa"), arch="llama")
    assert model.mapping_file == str(path)


def test_broken_user_mapping_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "maps"
    folder.mkdir()
    (folder / "bad.yaml").write_text(QWEN2_YAML.replace("kind: gated_mlp", "kind: gated_mpl"))
    monkeypatch.setenv("MODELKIT_MAPPINGS", str(folder))
    with pytest.raises(modelkit.MappingError) as info:
        modelkit.load(QWEN2)
    assert str(folder / "bad.yaml") in str(info.value) and "gated_mpl" in str(info.value)


# ---- the same through the command line -------------------------------------------------------

def test_cli_mapping_flag(qwen2_yaml: Path, tmp_path: Path) -> None:
    run = run_cli("run", "--model", QWEN2, "--mapping", qwen2_yaml, "--prompt", "Hello world",
                  "--max-tokens", "4", "--temperature", "0")
    assert run.returncode == 0, run.stderr
    assert run.stdout.endswith("\n")
    assert "Traceback" not in run.stderr

    val = run_cli("validate", "--model", QWEN2, "--mapping", qwen2_yaml)
    assert val.returncode == 0, val.stderr
    assert str(qwen2_yaml) in val.stdout and "ok" in val.stdout

    from conftest import copy_fixture, edit_config

    unknown = copy_fixture("qwen2", tmp_path / "unknown")
    edit_config(unknown, model_type="qwen2_custom", architectures=["Qwen2CustomForCausalLM"])
    missing = run_cli("validate", "--model", unknown)
    assert missing.returncode != 0
    assert missing.stderr.startswith("modelkit: error:") and "qwen2_custom" in missing.stderr


def test_cli_mappings_folder(qwen2_yaml: Path) -> None:
    env = cli_env(MODELKIT_MAPPINGS=str(qwen2_yaml.parent))
    archs = run_cli("archs", env=env)
    assert archs.returncode == 0, archs.stderr
    row = next(r for r in archs.stdout.splitlines() if r.split()[0] == "qwen2")
    assert str(qwen2_yaml) in row

    run = run_cli("run", "--model", QWEN2, "--prompt", "Hello", "--max-tokens", "3", "--temperature", "0",
                  env=env)
    assert run.returncode == 0, run.stderr

    val = run_cli("validate", "--model", QWEN2, env=env)
    assert val.returncode == 0 and str(qwen2_yaml) in val.stdout


def test_cli_greedy_text_matches_the_library(qwen2_yaml: Path) -> None:
    model = modelkit.load(QWEN2, mapping=qwen2_yaml)
    prompt = "The quick brown fox"
    ids = model.tokenizer.encode(prompt)
    expected = model.tokenizer.decode(model.generate(ids, max_new_tokens=6, temperature=0.0))
    run = run_cli("run", "--model", QWEN2, "--mapping", qwen2_yaml, "--prompt", prompt,
                  "--max-tokens", "6", "--temperature", "0", "--quiet")
    assert run.returncode == 0, run.stderr
    assert run.stdout.rstrip("\n") == expected.rstrip("\n")

"""Every config key a family's reference config has is accounted for by its mapping: read by a
config field (and honoured, or refused by a check), or declared inert with the reason. A key
that changes the math can then never be silently ignored; ``validate`` names the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES, copy_fixture, edit_config, run_cli

import modelkit
from modelkit.errors import MappingError
from modelkit.loading.choose import load_mapping
from modelkit.schema.vocabulary import INERT_CONFIG_KEYS

# model_type -> every key of transformers' default config (tests/fixtures/build_config_keys.py)
CONFIG_KEYS: dict[str, list[str]] = json.loads((FIXTURES / "config_keys.json").read_text())["model_types"]
# names a shipped mapping matches that transformers has no config class for (Falcon's legacy names)
NO_REFERENCE = {"RefinedWeb", "RefinedWebModel"}


def _hf_mappings() -> list[tuple[str, str]]:
    """(architecture, model_type) for every registered mapping over Hugging Face checkpoints."""
    registry = modelkit.plugins.registry()
    out = []
    for name, arch in registry.architectures.items():
        mapping = load_mapping(arch.mapping, registry)
        if mapping.serves_source("safetensors"):
            out.extend((name, model_type) for model_type in mapping.match.get("model_type", [])
                       if model_type not in NO_REFERENCE)
    return out


@pytest.mark.parametrize("arch, model_type", _hf_mappings())
def test_every_reference_config_key_is_read_or_declared_inert(arch: str, model_type: str) -> None:
    assert model_type in CONFIG_KEYS, (f"{model_type} is missing from tests/fixtures/config_keys.json: "
                                       f"rerun tests/fixtures/build_config_keys.py")
    registry = modelkit.plugins.registry()
    mapping = load_mapping(registry.architectures[arch].mapping, registry)
    unread = mapping.unread_config_keys(dict.fromkeys(CONFIG_KEYS[model_type]))
    assert unread == [], (f"{arch}: read these config keys (and honour or refuse them) or declare them "
                          f"under inert_config with the reason: {unread}")


def test_inert_reasons_are_given_and_read_keys_are_not_inert(tmp_path: Path) -> None:
    def write(inert: object) -> Path:
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump({"extends": "llama", "name": "x", "match": {"model_type": ["x"]},
                                        "inert_config": inert}))
        return path

    with pytest.raises(MappingError, match="inert_config.mlp_bias: expected the reason"):
        load_mapping(write({"mlp_bias": ""}))
    with pytest.raises(MappingError, match="inert_config: expected an object"):
        load_mapping(write(["mlp_bias"]))
    # an extension adds to its base's inert keys, and null takes one away
    m = load_mapping(write({"rope_type_v2": "a test", "mlp_bias": None}))
    assert m.inert_config == {"attention_bias": m.inert_config["attention_bias"], "rope_type_v2": "a test"}
    # a key a field reads is not inert, whatever a base said
    path = tmp_path / "reads.yaml"
    path.write_text(yaml.safe_dump({"extends": "llama", "name": "y", "match": {"model_type": ["y"]},
                                    "config": {"mlp_bias": {"from": "mlp_bias", "type": "bool", "default": False}}}))
    assert "mlp_bias" not in load_mapping(path).inert_config


def test_unread_keys_leave_out_the_generic_inert_ones() -> None:
    mapping = load_mapping(modelkit.plugins.registry().architectures["llama"].mapping)
    raw = {"hidden_size": 8, "use_cache": True, "bos_token_id": 1, "attention_bias": False, "use_qk_norm": True,
           "rope_parameters": {"rope_theta": 1.0}}
    assert set(INERT_CONFIG_KEYS) >= {"use_cache", "bos_token_id"}
    assert mapping.unread_config_keys(raw) == ["use_qk_norm"]


def test_validate_names_config_keys_the_mapping_does_not_read(tmp_path: Path) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    quiet = run_cli("validate", "--model", folder)
    assert quiet.returncode == 0 and "note:" not in quiet.stdout
    edit_config(folder, use_qk_norm=True, sliding_window_v2=4)
    noted = run_cli("validate", "--model", folder)
    assert noted.returncode == 0, noted.stderr  # a note, not a failure: most unknown keys are harmless
    assert "note: config keys this mapping does not read: sliding_window_v2, use_qk_norm" in noted.stdout


# (fixture, config.json changes, the refusal it must meet): every check of a shipped mapping that
# refuses a setting ("... is not supported") has a row here (the test below makes sure)
REFUSALS = [
    ("gemma", {"use_bidirectional_attention": True}, "use_bidirectional_attention: true (an encoder) is not supported"),
    ("gemma2", {"use_bidirectional_attention": True}, "use_bidirectional_attention: true (an encoder) is not supported"),
    ("gemma3_text", {"use_bidirectional_attention": True}, "use_bidirectional_attention: true (an encoder) is not supported"),
    ("bloom", {"apply_residual_connection_post_layernorm": True},
     "apply_residual_connection_post_layernorm: true (the normed input as the residual) is not supported"),
    ("falcon_h1", {"lm_head_multiplier": 0}, "lm_head_multiplier 0 is not supported"),
    ("mamba", {"rms_norm": False}, "rms_norm: false (LayerNorm Mamba) is not supported"),
    ("gpt_bigcode", {"add_cross_attention": True}, "add_cross_attention: true (cross-attention to an encoder) is not supported"),
]


@pytest.mark.parametrize("fixture, changes, message", REFUSALS)
def test_settings_a_mapping_does_not_implement_are_refused(tmp_path: Path, fixture: str, changes: dict,
                                                           message: str) -> None:
    folder = copy_fixture(fixture, tmp_path / "m")
    edit_config(folder, **changes)
    with pytest.raises(modelkit.ConfigError) as info:
        modelkit.inspect(folder)
    assert message in str(info.value) and str(folder / "config.json") in str(info.value)


def test_every_refusal_of_a_shipped_mapping_is_exercised() -> None:
    registry = modelkit.plugins.registry()
    tested = [message for _, _, message in REFUSALS]
    for name, arch in registry.architectures.items():
        mapping = load_mapping(arch.mapping, registry)
        if not mapping.serves_source("safetensors"):
            continue
        for _, message in mapping.checks:
            if "not supported" in message:
                assert any(t in message for t in tested), f"{name}: no test meets the refusal {message!r}"

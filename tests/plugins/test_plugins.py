"""The plugin contract: a throwaway plugin adds a block kind, a transform and an architecture
without touching the core, and the registry rejects duplicates and misspelled hooks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from conftest import write_tensors

import modelkit
from modelkit import hookimpl, plugins
from modelkit import Block, CheckpointError, ForwardContext, Option, ParamSpec


class ScaledReluMLP(Block):
    """A norm-free MLP branch: scale * relu(x W_in^T) W_out^T."""

    OPTIONS = {"hidden_size": Option("int", "$hidden_size", min=1),
               "intermediate_size": Option("int", min=1),
               "scale": Option("float", 1.0)}
    PARAMETERS = ("w_in", "w_out")

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        d, i = opts["hidden_size"], opts["intermediate_size"]
        return {"w_in": ParamSpec((i, d)), "w_out": ParamSpec((d, i))}

    def build(self, params: dict[str, np.ndarray | None]) -> None:
        self.w_in, self.w_out = params["w_in"], params["w_out"]
        self.scale = np.float32(self.options["scale"])

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        h = np.maximum(x @ self.w_in.T, np.float32(0.0))
        return self.scale * (h @ self.w_out.T)


def unflatten(a: np.ndarray, rows: int) -> np.ndarray:
    """A flat vector stored by the toy format -> a [rows, -1] matrix."""
    return np.ascontiguousarray(a.reshape(rows, -1))


def unflatten_shape(shape: tuple, rows: int) -> tuple:
    if len(shape) != 1 or shape[0] % rows:
        raise CheckpointError(f"unflatten: cannot make {rows} rows of shape {list(shape)}")
    return (rows, shape[0] // rows)


TOY_YAML = """\
modelkit_mapping: 1
name: toy_plugin_arch
match:
  model_type: toy_plugin
config:
  vocab_size: {from: vocab_size, type: int, min: 1}
  hidden_size: {from: hidden_size, type: int, min: 1}
  num_layers: {from: num_hidden_layers, type: int, min: 1}
  intermediate_size: {from: intermediate_size, type: int, min: 1}
  ffn_scale: {from: ffn_scale, type: float, default: 1.0}
model:
  tie_head: true
layers:
  count: $num_layers
  blocks:
    mlp: {kind: scaled_relu_mlp, intermediate_size: $intermediate_size, scale: $ffn_scale}
  flow: [[mlp]]
weights:
  embed.weight: tok.embed
  layers.{i}.mlp.w_in: {from: "blk.{i}.in_flat", transform: {unflatten: {rows: $intermediate_size}}}
  layers.{i}.mlp.w_out: blk.{i}.out
"""

VOCAB, D, I, LAYERS, SCALE = 11, 4, 6, 2, 0.5


class ToyPlugin:
    """Registers one block kind, one transform and one architecture."""

    def __init__(self, mapping: Path):
        self.mapping = mapping

    @hookimpl
    def register_block_kinds(self, register: Callable[..., None]) -> None:
        register("scaled_relu_mlp", ScaledReluMLP)

    @hookimpl
    def register_transforms(self, register: Callable[..., None]) -> None:
        register("unflatten", unflatten, unflatten_shape)

    @hookimpl
    def register_architectures(self, register: Callable[..., None]) -> None:
        register("toy_plugin_arch", self.mapping)


def _toy_checkpoint(folder: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    tensors = {"tok.embed": rng.normal(size=(VOCAB, D)).astype(np.float32)}
    for i in range(LAYERS):
        tensors[f"blk.{i}.in_flat"] = rng.normal(size=(I * D,)).astype(np.float32)
        tensors[f"blk.{i}.out"] = rng.normal(size=(D, I)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "toy_plugin", "vocab_size": VOCAB, "hidden_size": D, "num_hidden_layers": LAYERS,
        "intermediate_size": I, "ffn_scale": SCALE}))
    write_tensors(folder, tensors)
    return tensors


def _expected_logits(tensors: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    e = tensors["tok.embed"].astype(np.float64)
    h = e[ids]
    for i in range(LAYERS):
        w_in = tensors[f"blk.{i}.in_flat"].astype(np.float64).reshape(I, D)
        w_out = tensors[f"blk.{i}.out"].astype(np.float64)
        h = h + SCALE * (np.maximum(h @ w_in.T, 0.0) @ w_out.T)
    return h @ e.T  # tied head


def test_plugin_adds_block_kind_transform_and_architecture(tmp_path: Path) -> None:
    mapping = tmp_path / "toy.yaml"
    mapping.write_text(TOY_YAML)
    folder = tmp_path / "toy_model"
    tensors = _toy_checkpoint(folder)
    ids = [1, 5, 2, 10, 0, 7]

    # without the plugin the mapping names an unknown kind
    with pytest.raises(modelkit.MappingError, match="scaled_relu_mlp"):
        modelkit.load(folder, mapping=mapping)

    name = plugins.register_plugin(ToyPlugin(mapping), "toy-plugin")
    try:
        assert name == "toy-plugin"
        reg = plugins.registry()
        assert reg.block_kinds["scaled_relu_mlp"] is ScaledReluMLP
        assert reg.block_plugins["scaled_relu_mlp"] == "toy-plugin"
        assert reg.transforms["unflatten"].plugin == "toy-plugin"
        assert "toy_plugin_arch" in modelkit.architectures()

        model = modelkit.load(folder)  # detected through the plugin's architecture
        assert model.name == "toy_plugin_arch"
        logits = model.forward(ids)
        assert logits.dtype == np.float32 and logits.shape == (len(ids), VOCAB)
        np.testing.assert_allclose(logits, _expected_logits(tensors, ids), rtol=1e-5, atol=1e-5)

        # cached decoding works for a stateless custom block too
        cache = model.make_cache()
        rows = [model.forward(ids[:2], cache)] + [model.forward([t], cache) for t in ids[2:]]
        np.testing.assert_allclose(np.concatenate(rows), logits, rtol=1e-6, atol=1e-5)

        # the transform's shape function feeds the strict report
        bad = dict(tensors)
        bad["blk.1.in_flat"] = np.zeros(I * D + 1, np.float32)
        write_tensors(folder, bad)
        with pytest.raises(modelkit.WeightMismatchError, match="blk.1.in_flat"):
            modelkit.load(folder)
    finally:
        plugins.unregister_plugin("toy-plugin")
    assert "scaled_relu_mlp" not in plugins.registry().block_kinds
    assert "unflatten" not in plugins.registry().transforms
    assert "toy_plugin_arch" not in modelkit.architectures()


class _Registers:
    """A plugin whose hooks register the given names (for duplicate checks)."""

    def __init__(self, kinds=(), transforms=(), archs=()):
        self.kinds, self.transforms, self.archs = kinds, transforms, archs

    @hookimpl
    def register_block_kinds(self, register):
        for k in self.kinds:
            register(k, ScaledReluMLP)

    @hookimpl
    def register_transforms(self, register):
        for t in self.transforms:
            register(t, unflatten, unflatten_shape)

    @hookimpl
    def register_architectures(self, register):
        for a in self.archs:
            register(a, "unused.yaml")


@pytest.mark.parametrize("what, plugin, needle", [
    ("block kind", _Registers(kinds=["attention"]), "block kind 'attention' registered twice"),
    ("transform", _Registers(transforms=["transpose"]), "transform 'transpose' registered twice"),
    ("architecture", _Registers(archs=["llama"]), "architecture 'llama' registered twice"),
])
def test_duplicate_registration_is_a_plugin_error(what: str, plugin: object, needle: str) -> None:
    plugins.register_plugin(plugin, "dup-plugin")
    try:
        with pytest.raises(modelkit.PluginError, match=needle) as info:
            plugins.registry()
        assert "core" in str(info.value) and "dup-plugin" in str(info.value)
    finally:
        plugins.unregister_plugin("dup-plugin")
    assert plugins.registry().block_plugins["attention"] == "core"


def test_duplicate_within_one_plugin_is_a_plugin_error() -> None:
    plugins.register_plugin(_Registers(kinds=["twice_kind", "twice_kind"]), "dup-self")
    try:
        with pytest.raises(modelkit.PluginError, match="twice_kind"):
            plugins.registry()
    finally:
        plugins.unregister_plugin("dup-self")


def test_registering_a_plugin_name_twice_is_a_plugin_error() -> None:
    plugins.register_plugin(_Registers(), "twice")
    try:
        with pytest.raises(modelkit.PluginError, match="twice"):
            plugins.register_plugin(_Registers(), "twice")
    finally:
        plugins.unregister_plugin("twice")


class _Misspelled:
    @hookimpl
    def register_block_kind(self, register):  # the hook is register_block_kinds
        register("never", ScaledReluMLP)


def test_misspelled_hook_is_caught_by_check_pending() -> None:
    import pluggy

    # pluggy's own check, as plugins.register_plugin runs it
    pm = pluggy.PluginManager("modelkit")
    pm.add_hookspecs(modelkit.plugins.hookspecs)
    pm.register(_Misspelled(), name="misspelled")
    with pytest.raises(pluggy.PluginValidationError, match="register_block_kind"):
        pm.check_pending()

    with pytest.raises(modelkit.PluginError, match="register_block_kind"):
        plugins.register_plugin(_Misspelled(), "misspelled")
    # nothing is left behind: the registry still builds and later plugins still register
    assert plugins.pm.get_plugin("misspelled") is None
    assert "attention" in plugins.registry().block_kinds
    plugins.register_plugin(_Registers(), "after-misspelled")
    plugins.unregister_plugin("after-misspelled")


def test_builtin_plugins_arrive_through_the_hooks() -> None:
    reg = plugins.registry()
    for kind in ("attention", "mlp", "gated_mlp", "layernorm", "rmsnorm"):
        assert reg.block_plugins[kind] == "core"
    for name in ("transpose", "split", "reshape", "falcon_qkv", "scale", "scale_segments", "add"):
        assert reg.transforms[name].plugin == "core"
    for arch in ("gpt2", "llama", "mistral", "falcon", "granite3"):
        assert reg.architectures[arch].plugin == "core"
    assert reg.source_plugins["safetensors"] == "core"
    assert plugins.pm.get_plugin("core") is not None


def test_entry_points_name_the_plugins() -> None:
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="modelkit")}
    assert eps.get("core") == "modelkit.builtin"
    assert {"granite", "gguf"} <= set(eps)


def test_every_hook_is_documented() -> None:
    from modelkit.plugins import hookspecs

    for name in ("register_architectures", "register_block_kinds", "register_transforms",
                 "register_weight_sources"):
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "register(" in doc, name


class Identity(Block):
    """Hands back its input unchanged (the residual stream itself)."""

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        return x


class _IdentityPlugin:
    @hookimpl
    def register_block_kinds(self, register):
        register("identity_for_test", Identity)


IDENTITY_YAML = """\
name: identity_arch
match: {model_type: toy_identity}
config:
  vocab_size: {from: vocab_size, type: int}
  hidden_size: {from: hidden_size, type: int}
model: {tie_head: true}
layers:
  count: 2
  layout: LAYOUT
  residual_multiplier: 0.5
  blocks:
    mlp: {kind: identity_for_test}
  flow: [[mlp]]
weights:
  embed.weight: embed
"""


@pytest.mark.parametrize("layout", ["sequential", "parallel"])
def test_block_may_return_its_input(tmp_path: Path, layout: str) -> None:
    """x + r * f(x) with f the identity is (1 + r) x per layer, even though f returns x itself."""
    mapping = tmp_path / "identity.yaml"
    mapping.write_text(IDENTITY_YAML.replace("LAYOUT", layout))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "toy_identity", "vocab_size": 5,
                                                    "hidden_size": 3}))
    embed = np.arange(15, dtype=np.float32).reshape(5, 3) / 10
    write_tensors(folder, {"embed": embed})
    plugins.register_plugin(_IdentityPlugin(), "identity-plugin")
    try:
        logits = modelkit.load(folder, mapping=mapping).forward([1, 4])
    finally:
        plugins.unregister_plugin("identity-plugin")
    h = embed[[1, 4]].astype(np.float64) * 1.5 * 1.5
    np.testing.assert_allclose(logits, h @ embed.T.astype(np.float64), rtol=1e-6)


class Doubling(Block):
    """2 x, counting its calls (so a test sees a shared leading block run once)."""

    calls = 0

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        type(self).calls += 1
        return 2.0 * x


class _DoublingPlugin:
    @hookimpl
    def register_block_kinds(self, register):
        register("identity_for_test", Identity)
        register("doubling_for_test", Doubling)


PARALLEL_STEP_YAML = """\
name: parallel_step_arch
match: {model_type: toy_parallel_step}
config:
  vocab_size: {from: vocab_size, type: int}
  hidden_size: {from: hidden_size, type: int}
model: {tie_head: true}
layers:
  count: 1
  residual_multiplier: 0.5
  blocks:
    attn_norm: {kind: doubling_for_test}
    ssm: {kind: identity_for_test}
    attn: {kind: identity_for_test}
    mlp: {kind: identity_for_test}
  flow:
    - parallel: [[attn_norm, ssm], [attn_norm, attn]]
    - [mlp]
weights:
  embed.weight: embed
"""


def test_parallel_step_in_a_sequential_flow(tmp_path: Path) -> None:
    """Falcon-H1's layer: h += r * (ssm(n(h)) + attn(n(h))) with n run once, then h += r * mlp(h).
    With n = 2x and the rest identities: h -> h + 0.5 * (2h + 2h) = 3h -> 4.5h."""
    mapping = tmp_path / "parallel_step.yaml"
    mapping.write_text(PARALLEL_STEP_YAML)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "toy_parallel_step", "vocab_size": 5,
                                                    "hidden_size": 3}))
    embed = np.arange(15, dtype=np.float32).reshape(5, 3) / 10
    write_tensors(folder, {"embed": embed})
    plugins.register_plugin(_DoublingPlugin(), "doubling-plugin")
    try:
        model = modelkit.load(folder, mapping=mapping)
        Doubling.calls = 0
        logits = model.forward([1, 4])
    finally:
        plugins.unregister_plugin("doubling-plugin")
    assert Doubling.calls == 1  # the shared attn_norm of both branches
    assert [[list(b) for b in step] for step in model.layers[0].steps] == [
        [["attn_norm", "ssm"], ["attn_norm", "attn"]], [["mlp"]]]
    h = embed[[1, 4]].astype(np.float64) * 4.5
    np.testing.assert_allclose(logits, h @ embed.T.astype(np.float64), rtol=1e-6)

"""The transformers reference of ``modelkit compare``: run transformers on a checkpoint folder
and capture what modelkit's observer sees, under the same names (see :mod:`.reference`).

This module imports nothing but NumPy at module level and torch only inside its functions, so
the fixture builder (:mod:`modelkit.testing.build_fixture`) can use it in an environment that
has torch and transformers but not modelkit's plugin machinery.

transformers runs in float32 with eager attention (unless told otherwise), ``use_cache=False``,
``output_hidden_states``.
Its ``hidden_states`` are one per layer and are not indexed alike in every family (most start
with the embeddings and end with the final norm's output in place of the last layer's; Mamba2
starts with layer 0's output), so layer outputs are taken from forward hooks on the decoder
layer modules instead, the embeddings from the first layer's input, and only the final-normed
states from the last entry of ``hidden_states`` (when no final norm module is named). A block's
output is that of the module holding its parameters (``model.layers.3.self_attn`` for ``attn``),
when there is exactly one such module and it runs once.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def importable() -> str | None:
    """Why transformers cannot run here, or None when torch and transformers import."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return f"transformers and torch are not importable here ({exc})"
    return None


def find_layer_modules(model: Any, n_layers: int) -> list[str]:
    """Names of the decoder layers: the first ModuleList of ``n_layers`` modules."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return [f"{name}.{i}" for i in range(n_layers)]
    return []


def _as_rows(output: Any, n_tokens: int) -> np.ndarray | None:
    """A module's output as float32 [T, width], or None when it is not one batch row of T."""
    if isinstance(output, (tuple, list)):
        output = output[0] if output else None
    if output is None or not hasattr(output, "shape") or len(output.shape) != 3:
        return None
    if output.shape[0] != 1 or output.shape[1] != n_tokens:
        return None
    return output[0].detach().float().numpy().astype(np.float32)


def run(folder: str, ids: Sequence[int], *, n_layers: int, layer_modules: Sequence[str] | None = None,
        block_modules: dict[str, str] | None = None, final_norm_module: str | None = None,
        attention: str = "eager") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """transformers' states on ``ids`` for the checkpoint in ``folder``: ``(states, meta)``.

    ``states`` holds ``embed``, ``layer.{i}``, ``block.{i}.{name}`` (for each key of
    ``block_modules``, whose values are module names), ``final_norm`` and ``logits``;
    ``meta['not_captured']`` lists the blocks whose module did not give one [T, width] output.
    ``layer_modules`` default to the first ModuleList of ``n_layers`` modules. ``attention`` is
    transformers' attention implementation ("eager", or "sdpa": Falcon's eager path scales ALiBi
    by 1/sqrt(head_dim), its sdpa path, like the original Falcon-RW, does not).
    """
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()  # no notes on optional kernels, no load reports
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                              attn_implementation=attention)
    model.eval()
    n_tokens = len(ids)
    layers = list(layer_modules) if layer_modules else find_layer_modules(model, n_layers)
    wanted: dict[str, str] = {f"layer.{i}": name for i, name in enumerate(layers)}
    wanted.update(block_modules or {})
    if final_norm_module:
        wanted["final_norm"] = final_norm_module
    seen: dict[str, list[Any]] = {key: [] for key in wanted}
    handles = []
    modules = dict(model.named_modules())

    def keep(key: str) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            seen[key].append(_as_rows(output, n_tokens))
        return hook

    def keep_input(module: Any, args: Any, kwargs: Any) -> None:
        first = args[0] if args else kwargs.get("hidden_states")
        seen.setdefault("embed", []).append(_as_rows(first, n_tokens))

    try:
        for key, name in wanted.items():
            if name in modules:
                handles.append(modules[name].register_forward_hook(keep(key)))
        if layers and layers[0] in modules:
            handles.append(modules[layers[0]].register_forward_pre_hook(keep_input, with_kwargs=True))
        with torch.no_grad():
            out = model(input_ids=torch.tensor([list(map(int, ids))]), use_cache=False, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    states: dict[str, np.ndarray] = {}
    for key, calls in seen.items():
        if len(calls) == 1 and calls[0] is not None:  # a module run twice is ambiguous: left out
            states[key] = calls[0]
    if "final_norm" not in states and out.hidden_states:
        states["final_norm"] = _as_rows(out.hidden_states[-1], n_tokens)
    states["logits"] = out.logits[0].detach().float().numpy().astype(np.float32)
    meta = {"reference": f"transformers {transformers.__version__}", "torch": torch.__version__,
            "attn_implementation": attention, "dtype": "float32", "model_class": type(model).__name__,
            "not_captured": sorted(k for k in wanted if k not in states)}
    return {k: v for k, v in states.items() if v is not None}, meta

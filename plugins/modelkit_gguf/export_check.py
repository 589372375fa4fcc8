"""Is a GGUF file the model of the folder it was written from? Both are planned (the file as any
GGUF file is), and what makes the model is compared: the scalars, every block's kind and
options, and every parameter's shape. A difference is a setting the file cannot carry."""

from __future__ import annotations

from typing import Any

import numpy as np

from .wording import block_words

# block options that change only float rounding, not the model (the scan's chunk length)
ROUNDING_ONLY = {"chunk_size"}
LLAMA3 = "llama3 (one divisor per frequency)"


def _float32(value: Any) -> Any:
    """Floats (also inside dicts and tuples) as the float32 they compute with: a GGUF file stores
    float32, so 1e-5 read back from one is 9.99999975e-06, which a folder converted from a GGUF
    may state; two settings are the same when they are in float32."""
    if isinstance(value, float):
        return float(np.float32(value))
    if isinstance(value, dict):
        return {k: _float32(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_float32(v) for v in value)
    return value


def _describe(plan: Any) -> dict[str, Any]:
    """What makes the model: scalars, each block's kind and options (not the tunable ones), and
    each parameter's shape."""
    out: dict[str, Any] = {"tied head": plan.tied, "embedding multiplier": plan.embedding_multiplier,
                           "logits divisor": plan.logits_divisor, "logits soft cap": plan.logits_softcap,
                           "embedding width": plan.embed_dim, "layers": len(plan.layers)}

    def block(where: str, b: Any) -> None:
        options = {k: v for k, v in b.options.items() if k not in ROUNDING_ONLY
                   and not getattr(b.cls.OPTIONS.get(k), "tunable", False)}
        if "rope_scaling" in options:
            options["rope_scaling"] = _scaling(options["rope_scaling"])
        if "rope_freq_factors" in b.params:  # llama.cpp's form of llama3 scaling
            options["rope_scaling"] = LLAMA3
        out[where] = (b.kind, options)

    for name in ("final_norm", "embed_norm"):
        if getattr(plan, name) is not None:
            block(name, getattr(plan, name))
    for i, layer in enumerate(plan.layers):
        out[f"layer {i} residual multiplier"] = layer.residual_multiplier
        for name, b in layer.blocks.items():
            block(f"layer {i} {name}", b)
    for canonical, planned in plan.tensors.items():
        if canonical.endswith(".rope_freq_factors"):
            continue  # the llama3 scaling, compared as an option
        out[f"tensor {canonical}"] = tuple(planned.shape)
    return out


def _scaling(value: Any) -> Any:
    """rope scaling without what other options carry (transformers 5 puts the base and the
    rotary fraction in rope_parameters); the default type is no scaling."""
    if not isinstance(value, dict):
        return value
    value = {k: v for k, v in value.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if value.get("rope_type") == "llama3":
        return LLAMA3
    return None if value.get("rope_type", "default") == "default" and len(value) <= 1 else value



def _shown(value: Any) -> str:
    return "none" if value is None else repr(value)


def _option_words(block: Any, option: str) -> str:
    """An option's documentation without its parenthesised note: 'sliding window in tokens'."""
    spec = block.cls.OPTIONS.get(option) if block is not None else None
    doc = (getattr(spec, "doc", "") or "").split(" (")[0]
    if not doc or doc.split()[0].endswith("ed"):  # 'added to the variance ...': name it first
        return f"{option.replace('_', ' ')}" + (f" ({doc})" if doc else "")
    return doc


def _where(key: str) -> str:
    """'layer 0 attn' -> "layer 0's attention"; 'final_norm' -> 'final norm'."""
    parts = key.split(" ")
    if parts[0] == "layer" and len(parts) == 3:
        return f"layer {parts[1]}'s {block_words(parts[2])}"
    return block_words(key)


def differences(folder_plan: Any, file_plan: Any, arch: str = "") -> list[str]:
    """How the model the file describes differs from the folder's, one line each, in words:
    what the folder has, and what llama.cpp's ``arch`` would make of it."""
    a, b = _describe(folder_plan), _describe(file_plan)
    blocks = {}
    for plan in (folder_plan, file_plan):
        for i, layer in enumerate(plan.layers):
            for name, blk in layer.blocks.items():
                blocks.setdefault(f"layer {i} {name}", blk)
        for name in ("final_norm", "embed_norm"):
            if getattr(plan, name) is not None:
                blocks.setdefault(name, getattr(plan, name))
    llama = f"llama.cpp's {arch} architecture" if arch else "llama.cpp"
    lines = []
    for key in [*a, *(k for k in b if k not in a)]:
        if _float32(a.get(key)) == _float32(b.get(key)):
            continue
        if isinstance(a.get(key), tuple) and isinstance(b.get(key), tuple) and a[key][0] == b[key][0]:
            where = _where(key)
            for opt in sorted(set(a[key][1]) | set(b[key][1])):
                mine, theirs = a[key][1].get(opt), b[key][1].get(opt)
                if _float32(mine) != _float32(theirs):
                    lines.append(f"in {where}, the {_option_words(blocks.get(key), opt)} is {_shown(mine)}, and a "
                                 f"GGUF file of {llama} has no setting for it (it would be {_shown(theirs)})")
        elif key.startswith("tensor "):
            lines.append(f"its {key} is {_shown(a.get(key))} in the folder and would be {_shown(b.get(key))} "
                         f"in a GGUF file of {llama}")
        else:
            lines.append(f"its {key} is {_shown(a.get(key))}, and a GGUF file of {llama} has no setting for "
                         f"it (it would be {_shown(b.get(key))})")
    return lines

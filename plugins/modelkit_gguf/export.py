"""`modelkit convert FOLDER OUT.gguf`: a Hugging Face folder as a GGUF file, in llama.cpp's layout.

The folder is planned and read by its own mapping (``llama``, ``granite``, ...); every canonical
tensor is then written under the name, and in the form, the family's GGUF mapping
(``llama-gguf``, ...) reads it from: each transform that mapping applies on loading is undone
(``unpermute_rope`` by llama.cpp's permutation, ``undo_neg_exp`` by ``-exp``, a reshape back to
the stored shape, split or sliced parts joined into one tensor), so the file is what llama.cpp's
``convert_hf_to_gguf.py`` writes. Metadata comes from :mod:`.export_meta`. F32, F16, BF16 or
Q8_0 (gguf-py's quantiser); norms, biases and the tensors llama.cpp keeps in float32 stay F32,
as the converter keeps them.

The file is written through :class:`~.output.OutputFile` (its folder locked, a temporary file
beside it, renamed into place only when complete; never into or over the source). Before it
takes its name it is opened and planned like any GGUF file: a model the file would describe
differently from the folder (a setting no GGUF key carries, such as a sliding window llama.cpp's
llama does not have) is refused in words, and the temporary file removed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType

from modelkit import (PLACEHOLDER, CheckpointError, TensorReader, WeightMismatchError, find_mapping, inspect,
                      resolve_path)

from .export_check import differences
from .export_meta import model_metadata, tokenizer_metadata
from .export_write import type_max, write_gguf
from .families import FAMILIES, ROWS, Family
from .output import OutputFile, refuse_overlap
from .wording import form_words, tensor_words

# --dtype -> (the type of quantisable tensors, general.file_type)
TYPES = {"f32": (Q.F32, LlamaFileType.ALL_F32), "f16": (Q.F16, LlamaFileType.MOSTLY_F16),
         "bf16": (Q.BF16, LlamaFileType.MOSTLY_BF16), "q8_0": (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0)}
ALIASES = {"float32": "f32", "fp32": "f32", "float16": "f16", "fp16": "f16", "bfloat16": "bf16", "q8": "q8_0"}
# tensors the converter keeps in float32 whatever the output type (ModelBase.prepare_tensors;
# Mamba's A and D are F32 in its files too)
F32_KINDS = ("ffn_gate_inp.weight", "position_embd.weight", "ssm_conv1d.weight", "shortconv.conv.weight", "ssm_a",
             "ssm_d")
# the stored shape of tensors the GGUF mapping reshapes on loading (Mamba2Model.modify_tensors):
# GGUF kind -> (canonical shape, the block's options) -> stored shape
STORED_SHAPES: dict[str, Callable[[tuple[int, ...], dict[str, Any]], tuple[int, ...]]] = {
    "ssm_a": lambda shape, opts: (*shape, 1),
    "ssm_d": lambda shape, opts: (*shape, 1),
    "ssm_norm.weight": lambda shape, opts: (opts["n_groups"], shape[0] // opts["n_groups"]),
}


def llama_cpp_permute(a: np.ndarray, heads: int) -> np.ndarray:
    """LlamaModel.permute: each head's rows in halves -> interleaved (what unpermute_rope undoes)."""
    return np.ascontiguousarray(a.reshape(heads, 2, a.shape[0] // heads // 2, *a.shape[1:])
                                .swapaxes(1, 2).reshape(a.shape))


@dataclass
class Part:
    """One canonical tensor's share of a stored tensor."""

    canonical: str
    undo: list[Callable[[np.ndarray], np.ndarray]] = field(default_factory=list)


@dataclass
class Stored:
    """One tensor of the GGUF file: its name, shape (NumPy order) and the parts it is made of."""

    name: str
    shape: tuple[int, ...]
    parts: list[Part]
    axis: int = 0  # parts are joined along it
    made: np.ndarray | None = None  # a tensor the folder does not have, made from its config


def llama3_rope_freqs(scaling: dict[str, Any], head_dim: int, base: float) -> np.ndarray:
    """The divisor of each rotary frequency that llama3 rope scaling amounts to, as llama.cpp's
    converter writes it (LlamaModel.generate_extra_tensors, ``rope_freqs.weight``)."""
    freqs = 1.0 / (np.float32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old = scaling.get("original_max_position_embeddings", 8192)
    out = []
    for freq in freqs.astype(np.float32):
        wavelen = 2 * np.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, np.float32)


# Hugging Face mappings llama.cpp writes as another family's architecture
WRITTEN_AS = {"mistral": "llama"}


def family_of(mapping_name: str, plan: Any = None) -> Family:
    """The llama.cpp architecture a folder of this mapping is written as. A Granite 4.0-H without
    Mamba2 layers is a dense Granite, as GraniteHybridModel writes it."""
    mapping_name = WRITTEN_AS.get(mapping_name, mapping_name)
    if mapping_name == "granite" and plan is not None and all("ssm" not in layer.blocks for layer in plan.layers) \
            and all(layer.blocks["mlp"].kind != "moe" for layer in plan.layers):
        return FAMILIES["granite"]
    for family in ROWS:
        if family.mapping == mapping_name:
            return family
    known = ", ".join(sorted({f.mapping for f in ROWS}))
    raise CheckpointError(f"cannot convert this {mapping_name} folder to a GGUF file: modelkit writes GGUF files "
                          f"only for the families llama.cpp reads ({known})")


def _value(arg: Any, cfg: Any, what: str, arch: str) -> Any:
    if isinstance(arg, str) and arg.startswith("$"):
        name = arg[1:].strip()
        if name.isidentifier() and name in cfg:
            return cfg[name]
        raise _cannot(arch, f"how it stores {what} depends on a setting modelkit does not work out "
                            f"({name})")
    return arg


def _pick(sources: list[str], blocks: dict[str, Any]) -> str:
    """The name the converter writes among a GGUF mapping's alternatives: the shared-expert name
    beside routed experts (GraniteMoeModel), the plain one otherwise; Falcon's attention norm as
    attn_norm_2 beside a second norm (falcon-40b's ln_attn), as attn_norm alone (falcon-7b)."""
    if len(sources) > 1 and any("_shexp" in s for s in sources):
        moe = blocks.get("mlp") is not None and blocks["mlp"].kind == "moe"
        return next(s for s in sources if ("_shexp" in s) == moe)
    if len(sources) > 1 and any(".attn_norm_2." in s for s in sources):
        return next(s for s in sources if (".attn_norm_2." in s) == ("mlp_norm" in blocks))
    return sources[0]


def _cannot(arch: str, what: str) -> CheckpointError:
    return CheckpointError(f"cannot convert this folder to a GGUF file of llama.cpp's {arch} architecture: {what}")


def layout(plan: Any, gguf_mapping: Any, arch: str) -> list[Stored]:
    """Every tensor of the GGUF file, in the folder plan's order, with how to make it; a tensor
    llama.cpp's ``arch`` has no place or form for is refused in plain words."""
    entries = {w.target: w for w in gguf_mapping.weights}
    order = {w.target: n for n, w in enumerate(gguf_mapping.weights)}
    stored: dict[str, Stored] = {}
    for canonical, planned in plan.tensors.items():
        parts = canonical.split(".")
        layer = parts[1] if parts[0] == "layers" else ""
        block_name, local = (parts[2], ".".join(parts[3:])) if layer else ("", canonical)
        block = plan.layers[int(layer)].blocks[block_name] if layer else None
        template = f"layers.{PLACEHOLDER}.{block_name}.{local}" if layer else local
        w = entries.get(template)
        shown = planned.source or canonical
        if w is None or w.stack is not None:
            what = f"the folder's {tensor_words(template)} ({shown})"
            raise _cannot(arch, f"it has no place for {what}" if w is None else
                          f"it keeps {what} as one tensor per piece, which modelkit does not write")
        blocks = plan.layers[int(layer)].blocks if layer else {}
        name = _pick(w.sources, blocks).replace(PLACEHOLDER, layer)
        shape = tuple(planned.shape)
        part = Part(canonical)
        axis, fused = 0, False
        for tname, args in reversed(w.transforms):
            if tname == "unpermute_rope":
                heads = _value(args["heads"], plan.config, shown, arch)
                part.undo.append(lambda a, h=heads: llama_cpp_permute(a, h))
            elif tname == "scale":
                factor = float(_value(args["factor"], plan.config, shown, arch))
                if factor == 0:
                    raise _cannot(arch, f"it stores {shown} divided by a setting that is 0 in this folder, so "
                                        f"the value cannot be written")
                part.undo.append(lambda a, f=factor: (a / np.float32(f)).astype(np.float32))
            elif tname == "undo_neg_exp":
                part.undo.append(lambda a: (-np.exp(a.astype(np.float64))).astype(np.float32))
            elif tname == "reshape" and _kind(name) in STORED_SHAPES:
                to = STORED_SHAPES[_kind(name)](shape, block.options if block is not None else {})
                part.undo.append(lambda a, s=to: a.reshape(s))
                shape = to
            elif tname in ("split", "slice"):
                axis, fused = int(args.get("axis", 0)), True
            elif tname == "falcon_qkv" and _value(args["layout"], plan.config, shown, arch) == "multi_query":
                fused = True  # all queries, then the key head, then the value head: q, k, v joined
            else:
                raise _cannot(arch, f"it stores the folder's {tensor_words(template)} ({shown}) "
                                    f"{form_words([tname])}, and modelkit does not write that form")
        if name in stored:
            if not fused:
                raise _cannot(arch, f"two of the folder's tensors ({shown} and another) would both be "
                                    f"its tensor {name}")
            s = stored[name]
            s.parts.append(part)
            s.parts.sort(key=lambda p: order[_template(p.canonical)])
            s.shape = tuple(d + shape[i] if i == axis else d for i, d in enumerate(s.shape))
        else:
            stored[name] = Stored(name, shape, [part], axis)
    return list(stored.values())


def _template(canonical: str) -> str:
    parts = canonical.split(".")
    return ".".join(["layers", PLACEHOLDER, *parts[2:]]) if parts[0] == "layers" else canonical


def _kind(name: str) -> str:
    parts = name.split(".", 2)
    return parts[2] if parts[0] == "blk" and len(parts) == 3 else name


def storage_type(stored: Stored, qtype: Q) -> Q:
    """What the converter stores a tensor as: float32 for 1-D tensors, norms and F32_KINDS; the
    output type otherwise, F16 where Q8_0's blocks of 32 do not divide the rows."""
    if len(stored.shape) <= 1 or stored.name.endswith("_norm.weight") or _kind(stored.name) in F32_KINDS:
        return Q.F32
    if qtype == Q.Q8_0 and stored.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        return Q.F16
    return qtype


def _make(stored: Stored, reader: TensorReader, plan: Any) -> np.ndarray:
    if stored.made is not None:
        return stored.made
    arrays = []
    for part in stored.parts:
        a = reader.read(plan.tensors[part.canonical])
        for fn in part.undo:
            a = fn(a)
        arrays.append(a)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=stored.axis)


def export(src: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "f32", arch: str | None = None,
           mapping: str | os.PathLike | None = None, force: bool = False, clip: bool = False) -> dict[str, Any]:
    """Write the Hugging Face folder ``src`` as the GGUF file ``out`` (f32, f16, bf16 or q8_0).

    ``out`` must not be, hold or lie inside the source; it is written as a temporary file beside
    it and renamed into place once complete and checked (:class:`OutputFile`), so a failure or
    an interruption leaves no partial file under its name. A value beyond its tensor's type is
    an error naming the tensor, unless ``clip``. Returns a summary: the file, the architectures,
    the tensor count and type, the values clipped per tensor and each such tensor's limit.
    """
    dtype = ALIASES.get(dtype.lower(), dtype.lower())
    if dtype not in TYPES:
        raise CheckpointError(f"--dtype {dtype!r}: a GGUF file is written as f32, f16, bf16 or q8_0")
    out = Path(out).expanduser()
    source, choice, plan = inspect(resolve_path(src), arch, mapping)
    try:
        if source.kind == "gguf":
            raise CheckpointError(f"{source.path}: is a GGUF file already; give a Hugging Face folder to write "
                                  f"a GGUF file from (or OUT as a folder to write this file as one)")
        if not plan.report.ok:
            raise WeightMismatchError(plan.report, plan.report.summary(str(source.path)))
        family = family_of(choice.mapping.name, plan)
        raw = source.config()
        gguf_mapping = find_mapping({"model_type": family.model_type}, "gguf", arch=family.name).mapping
        meta = {**model_metadata(family, plan, raw), **tokenizer_metadata(source, raw, plan.config["vocab_size"])}
        tensors = layout(plan, gguf_mapping, family.arch)
        scaling = plan.config.get("rope_scaling")
        if isinstance(scaling, dict) and scaling.get("rope_type") == "llama3":
            freqs = llama3_rope_freqs(scaling, plan.config["head_dim"], plan.config["rope_theta"])
            tensors.append(Stored("rope_freqs.weight", freqs.shape, [], made=freqs))
        qtype, file_type = TYPES[dtype]
        kinds = [storage_type(t, qtype) for t in tensors]
        refuse_overlap(source, out, "file")
        with OutputFile(out, force) as target:
            reader = TensorReader(source)
            try:
                clipped: dict[str, int] = {}
                tmp = target.write_path(out.name, lambda path: clipped.update(write_gguf(
                    path, family.arch, {"name": Path(source.path).name, "file_type": file_type}, meta,
                    [(t.name, t.shape, k) for t, k in zip(tensors, kinds)],
                    lambda i: _make(tensors[i], reader, plan), clip)))
            finally:
                reader.close()
            _check(tmp, out, plan, family)
            target.publish()
    finally:
        source.close()
    limits = {t.name: type_max(k) for t, k in zip(tensors, kinds) if t.name in clipped}
    return {"file": out, "source_arch": choice.mapping.name, "target_arch": family.name,
            "tensors": len(tensors), "dtype": dtype, "clipped": clipped, "limits": limits}


def _check(tmp: Path, out: Path, plan: Any, family: Family) -> None:
    """Refuse a written file that describes another model than the folder's: a setting llama.cpp
    decides in code for the family's architecture, which no GGUF key carries."""
    check, _, file_plan = inspect(tmp)
    check.close()
    changed = differences(plan, file_plan, family.arch)
    if changed:
        raise CheckpointError(f"cannot convert this folder to a GGUF file: {changed[0]}; see docs/gguf.md, "
                              f"families")
    if not file_plan.report.ok:
        problem = file_plan.report.summary(str(out)).splitlines()[0]
        raise CheckpointError(f"cannot convert this folder to a GGUF file: the file would not load back ({problem})")

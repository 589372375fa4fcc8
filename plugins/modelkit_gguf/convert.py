"""`modelkit convert SRC OUT`: write a checkpoint (a GGUF file) as a Hugging Face folder.

The folder has config.json, model.safetensors, tokenizer.json, tokenizer_config.json and
generation_config.json, as transformers' ``from_pretrained`` expects. Tensors go through the
same plan as :func:`modelkit.load` (dequantised to float32, transforms such as
``unpermute_rope`` applied), then get the names of the architecture's safetensors mapping
(``llama`` for ``llama-gguf``, ``gemma3`` for ``gemma3-gguf``): the canonical parameter
``layers.3.attn.q.weight`` becomes ``model.layers.3.self_attn.q_proj.weight``. Where that
mapping transforms a tensor on loading (Gemma's norms get 1 added), the inverse is written, so
the folder loads back to the same weights. One tensor is in memory at a time; the safetensors
file is written as it goes.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from modelkit import (PLACEHOLDER, CheckpointError, MappingError, Plan, TensorReader, UnknownArchitectureError,
                      WeightMismatchError, WeightSource, find_mapping, inspect, resolve_path)

from .output import OutputFolder, refuse_overlap
from .wording import form_words, tensor_words

# --dtype value -> (NumPy dtype, safetensors dtype name, config.json torch_dtype)
DTYPES: dict[str, tuple[Any, str, str]] = {
    "float32": (np.float32, "F32", "float32"),
    "bfloat16": (None, "BF16", "bfloat16"),  # ml_dtypes.bfloat16, imported on use
    "float16": (np.float16, "F16", "float16"),
}
DTYPE_ALIASES = {"f32": "float32", "fp32": "float32", "bf16": "bfloat16", "f16": "float16",
                 "fp16": "float16"}
# config keys a weight source adds for its own mappings, not for config.json
PRIVATE_CONFIG_KEYS = ("gguf",)


def _numpy_dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return DTYPES[name][0]


# transforms a safetensors mapping applies on loading that convert undoes when writing, with
# literal arguments: Gemma's norms are stored as w - 1 and get {add: {value: 1.0}} on loading,
# so the folder stores the (1 + w) weights a GGUF holds minus 1
INVERSES: dict[str, tuple[str, Callable[[np.ndarray, float], np.ndarray]]] = {
    "add": ("value", lambda a, value: (a - np.float32(value)).astype(np.float32)),
}


@dataclass
class Destination:
    """Where one canonical parameter goes in the folder: its name there, and the inverses of the
    target mapping's transforms, in the order they are applied when writing."""

    name: str
    undo: list[tuple[Callable[[np.ndarray, float], np.ndarray], float]] = field(default_factory=list)

    def apply(self, array: np.ndarray) -> np.ndarray:
        for fn, arg in self.undo:
            array = fn(array, arg)
        return array


def _cannot(target: Any, what: str) -> MappingError:
    return MappingError(f"cannot convert this GGUF file to a Hugging Face folder of {target.name}: {what}")


def _undo(template: str, target: Any, transforms: list[tuple[str, dict[str, Any]]], name: str) -> list[Any]:
    undo = []
    for tname, args in reversed(transforms):  # the last transform applied is undone first
        inverse = INVERSES.get(tname)
        arg = args.get(inverse[0]) if inverse is not None else None
        if inverse is None or set(args) != {inverse[0]} or isinstance(arg, bool) \
                or not isinstance(arg, (int, float)):
            raise _cannot(target, f"its {tensor_words(template)} would have to be stored "
                                  f"{form_words([n for n, _ in transforms])} ({name}), and modelkit does not "
                                  f"write that form back")
        undo.append((inverse[1], float(arg)))
    return undo


def hf_names(plan: Plan, target: Any) -> dict[str, Destination]:
    """Canonical parameter -> the tensor name ``target`` (a safetensors mapping) reads it from,
    and how to undo the transforms ``target`` applies to it on loading.

    Refuses, in plain words, a target that lacks an entry, stacks a tensor from pieces, or
    transforms it in a way with no inverse here.
    """
    by_target = {w.target: w for w in target.weights}
    out = {}
    for canonical in plan.tensors:
        parts = canonical.split(".")
        is_layer = parts[0] == "layers"
        template = ".".join(["layers", PLACEHOLDER, *parts[2:]]) if is_layer else canonical
        spec = by_target.get(template)
        if spec is None:
            raise _cannot(target, f"the GGUF file has a {tensor_words(template)} ({canonical}) that the Hugging "
                                  f"Face layout of {target.name} has no place for")
        shown = target.checkpoint_names(spec.sources, "N" if is_layer else "")[0]
        if spec.stack is not None:
            raise _cannot(target, f"its {tensor_words(template)} would have to be stored as one tensor per "
                                  f"piece ({shown}), and modelkit does not write those")
        name = target.checkpoint_names(spec.sources, parts[1] if is_layer else "")[0]
        out[canonical] = Destination(name, _undo(template, target, spec.transforms, shown))
    return out


def _hf_config(raw: dict[str, Any], torch_dtype: str) -> dict[str, Any]:
    if (raw.get("gguf") or {}).get("rope_freqs"):
        # llama.cpp keeps only the resulting divisors; config.json needs llama3's parameters
        raise CheckpointError("cannot convert this GGUF file to a Hugging Face folder: it keeps Llama 3's rope "
                              "scaling only as one divisor per frequency (rope_freqs.weight), and config.json "
                              "needs the scaling's own settings, which cannot be recovered from those; run the "
                              "GGUF file directly instead")
    cfg = {k: v for k, v in raw.items() if k not in PRIVATE_CONFIG_KEYS}
    cfg["torch_dtype"] = torch_dtype
    return cfg


def _safetensors_header(entries: list[tuple[str, tuple[int, ...]]], dtype_name: str,
                        itemsize: int) -> tuple[bytes, int]:
    """The safetensors header for tensors written in this order, and the data size."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in entries:
        size = int(np.prod(shape, dtype=np.int64)) * itemsize
        header[name] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text, offset


def _fit(array: np.ndarray, np_dtype: Any, dtype: str, name: str, clip: bool) -> tuple[np.ndarray, int]:
    """``array`` (float32) cast to ``np_dtype``, and how many values were clipped.

    A finite value beyond the dtype's range would become infinity (float16 ends at 65504):
    refused by tensor name, or with ``clip`` set to the largest finite value of its sign."""
    if np_dtype is np.float32:
        return array, 0
    with np.errstate(over="ignore"):
        cast = array.astype(np_dtype)
    over = np.isinf(cast) & np.isfinite(array)  # [same shape] values the cast made infinite
    count = int(np.count_nonzero(over))
    if not count:
        return cast, 0
    largest = dtype_max(dtype)
    if not clip:
        worst = float(np.max(np.abs(array[over])))
        wider = "float32 or bfloat16" if dtype == "float16" else "float32"
        raise CheckpointError(f"tensor '{name}': {count} value(s) beyond {dtype}'s range (up to {worst:.4g}; "
                              f"{dtype} ends at {largest:.5g}); choose --dtype {wider}, or --clip to clip them")
    cast[over] = np.where(array[over] > 0, largest, -largest).astype(np_dtype)
    return cast, count


def dtype_max(dtype: str) -> float:
    """The largest finite value of a --dtype (65504 for float16)."""
    import ml_dtypes  # its finfo knows bfloat16 as well as NumPy's types

    return float(ml_dtypes.finfo(_numpy_dtype(dtype)).max)


def write_weights(source: WeightSource, plan: Plan, names: dict[str, Destination], f: BinaryIO,
                  dtype: str, progress: bool = False, clip: bool = False) -> tuple[int, dict[str, int]]:
    """Stream every planned tensor into one safetensors file open as ``f``; returns the parameter
    count and, with ``clip``, how many values were clipped in each tensor that needed it."""
    np_dtype = _numpy_dtype(dtype)
    entries = [(names[c].name, tuple(p.shape)) for c, p in plan.tensors.items()]
    header, _ = _safetensors_header(entries, DTYPES[dtype][1], np.dtype(np_dtype).itemsize)
    reader = TensorReader(source)
    bar = _progress_bar(len(entries), progress)
    count, clipped = 0, {}
    try:
        f.write(header)
        for canonical, planned in plan.tensors.items():
            name = names[canonical].name
            array = names[canonical].apply(reader.read(planned))  # float32, in the folder's form
            array, n_clipped = _fit(array, np_dtype, dtype, name, clip)
            if n_clipped:
                clipped[name] = n_clipped
            _write_array(f, array)
            count += array.size
            if bar is not None:
                bar.update(1)
    finally:
        reader.close()
        if bar is not None:
            bar.close()
    return count, clipped


def _write_array(f: BinaryIO, array: np.ndarray) -> None:
    # safetensors is little-endian, C order; write the buffer itself, no bytes copy
    array = np.ascontiguousarray(array)
    if sys.byteorder != "little":
        array = array.byteswap()
    f.write(array.view(np.uint8).data)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="converting", unit="tensor", leave=False, file=sys.stderr)


def _tokenizer_files(source: WeightSource, out: OutputFolder, max_length: Any) -> bool:
    tok = source.tokenizer()
    if tok is None:
        return False
    out.write_by_path("tokenizer.json", lambda path: tok.backend.save(path, pretty=True))
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                              "clean_up_tokenization_spaces": False}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = getattr(tok, key, None) or tok.extra.get(key)
        if isinstance(value, str):
            config[key] = value
    for key in ("add_bos_token", "add_eos_token"):
        if isinstance(tok.extra.get(key), bool):
            config[key] = tok.extra[key]
    if isinstance(max_length, int):
        config["model_max_length"] = max_length
    if tok.chat_template:
        config["chat_template"] = tok.chat_template
    out.write_json("tokenizer_config.json", config)
    return True


def convert(src: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "float32",
            arch: str | None = None, mapping: str | os.PathLike | None = None, force: bool = False,
            clip: bool = False, progress: bool = False) -> dict[str, Any]:
    """Write checkpoint ``src`` (a GGUF file, or anything modelkit loads) to folder ``out`` in
    the Hugging Face layout, tensors as ``dtype`` (float32, bfloat16 or float16).

    A value beyond ``dtype``'s range (float16 ends at 65504) is an error naming its tensor,
    unless ``clip`` (then it becomes the largest finite value of its sign). ``out`` must not be,
    hold or lie inside the source. Files are written through temporary files and renamed into
    place at the end (:class:`OutputFolder`), so a failed or interrupted convert leaves no
    partial file under a real name.

    Returns a summary: the folder, the architecture of each side, the parameter count, the
    files written and the values clipped per tensor.
    """
    dtype = DTYPE_ALIASES.get(dtype, dtype)
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype {dtype!r}: expected one of float32 (f32), bfloat16 (bf16), float16 (f16)")
    out = Path(out).expanduser()
    source, choice, plan = inspect(resolve_path(src, progress=progress), arch, mapping)
    try:
        if not plan.report.ok:
            raise WeightMismatchError(plan.report, plan.report.summary(str(source.path)))
        raw = source.config()
        hf_raw = _hf_config(raw, DTYPES[dtype][2])
        try:
            target = find_mapping(hf_raw, "safetensors")
        except UnknownArchitectureError:
            raise UnknownArchitectureError(
                f"{source.path}: no safetensors mapping matches model_type {raw.get('model_type')!r}, "
                f"so there is no Hugging Face layout to write") from None
        names = hf_names(plan, target.mapping)
        refuse_overlap(source, out)
        with OutputFolder(out, force) as folder:
            n_params, clipped = folder.write(
                "model.safetensors", lambda f: write_weights(source, plan, names, f, dtype, progress, clip))
            folder.write_json("config.json", hf_raw)
            files = ["config.json", "model.safetensors"]
            if _tokenizer_files(source, folder, raw.get("max_position_embeddings")):
                files += ["tokenizer.json", "tokenizer_config.json"]
            gen = source.generation_config()
            if gen:
                folder.write_json("generation_config.json", gen)
                files.append("generation_config.json")
            folder.publish()
    finally:
        source.close()
    return {"folder": out, "source_arch": choice.mapping.name, "target_arch": target.mapping.name,
            "parameters": n_params, "dtype": dtype, "files": files, "clipped": clipped}

"""`modelkit convert SRC OUT`: write a checkpoint (a GGUF file) as a Hugging Face folder.

The folder has config.json, model.safetensors, tokenizer.json, tokenizer_config.json and
generation_config.json, as transformers' ``from_pretrained`` expects. Tensors go through the
same plan as :func:`modelkit.load` (dequantised to float32, transforms such as
``unpermute_rope`` applied), then get the names of the architecture's safetensors mapping
(``llama`` for ``llama-gguf``, ``gemma3`` for ``gemma3-gguf``): the canonical parameter
``layers.3.attn.q.weight`` becomes ``model.layers.3.self_attn.q_proj.weight``. Where that
mapping transforms a tensor on loading (Gemma's norms get 1 added, Falcon's q, k and v are cut
out of one fused tensor, Mamba's conv1d is reshaped, Mixtral's experts are stacked), the inverse
registered with the transform is written (:func:`modelkit.stored_layout`), so the folder loads
back to the same weights. One group of tensors (those made from the same parameters: one fused
tensor, or one expert stack) is in memory at a time; the safetensors file is written as it goes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from modelkit import (CannotWriteBack, CheckpointError, MappingError, Plan, StoredTensor, TensorReader,
                      UnknownArchitectureError, WeightMismatchError, WeightSource, find_mapping, inspect,
                      resolve_path, stored_layout)

from .output import OutputFolder, refuse_overlap
from .rope_back import llama3_scaling
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


def _cannot(target: Any, what: str) -> MappingError:
    return MappingError(f"cannot convert this GGUF file to a Hugging Face folder of {target.name}: {what}")


def _words(exc: CannotWriteBack) -> str:
    """What a :class:`CannotWriteBack` says, in plain words."""
    what = tensor_words(exc.template)
    if exc.reason == "no_place":
        return f"the GGUF file has a {what} ({exc.stored}) that the Hugging Face layout has no place for"
    if exc.reason == "incomplete":
        return (f"its {what} would have to be stored in one tensor ({exc.stored}) with parts that the GGUF "
                f"file does not hold")
    if exc.reason == "shared":
        return f"its {what} would have to be stored as the same tensor as another ({exc.stored})"
    return (f"its {what} would have to be stored {form_words(exc.transforms)} ({exc.stored}), and modelkit "
            f"does not write that form back")


def hf_layout(plan: Plan, target: Any, hf_raw: dict[str, Any]) -> list[list[StoredTensor]]:
    """The tensors of ``target``'s (a safetensors mapping's) layout for the planned canonical
    parameters, grouped by the parameters they are made from (:func:`modelkit.stored_layout`):
    ``layers.3.attn.q.weight`` becomes ``model.layers.3.self_attn.q_proj.weight``, a stacked
    entry one tensor per expert, fused entries one tensor from their pieces, each transform
    ``target`` applies on loading undone by its registered inverse.

    Refuses, in plain words, a parameter ``target`` has no place for or a form with no inverse.
    """
    try:
        return stored_layout(target, hf_raw, {c: tuple(p.shape) for c, p in plan.tensors.items()})
    except CannotWriteBack as exc:
        raise _cannot(target, _words(exc)) from None


def _rope_scaling_back(source: WeightSource, plan: Plan, raw: dict[str, Any]) -> tuple[Plan, dict[str, Any]]:
    """Llama 3's rope scaling settings for config.json, from the divisors llama.cpp keeps as
    ``rope_freqs.weight`` (see :mod:`.rope_back`), and the plan without those tensors (the
    folder holds the settings instead)."""
    kept = {c: p for c, p in plan.tensors.items() if not c.endswith(".attn.rope_freq_factors")}
    read = [p for c, p in plan.tensors.items() if c not in kept]
    reader = TensorReader(source)
    try:
        divisors = reader.read(read[0]) if read else None
    finally:
        reader.close()
    scaling = None
    if divisors is not None:
        scaling = llama3_scaling(divisors, float(raw.get("rope_theta", 10000.0)), 2 * divisors.size,
                                 (raw.get("rope_scaling") or {}).get("original_max_position_embeddings"))
    if scaling is None:
        raise CheckpointError("cannot convert this GGUF file to a Hugging Face folder: its rotary frequencies "
                              "are divided one by one (rope_freqs.weight) in a way that follows no Llama 3 "
                              "rope scaling, and config.json can only say the scaling's settings; run the GGUF "
                              "file directly instead")
    return dataclasses.replace(plan, tensors=kept), scaling


def _hf_config(raw: dict[str, Any], torch_dtype: str, rope_scaling: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = {k: v for k, v in raw.items() if k not in PRIVATE_CONFIG_KEYS}
    if rope_scaling is not None:
        cfg["rope_scaling"] = rope_scaling
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


def write_weights(source: WeightSource, plan: Plan, groups: list[list[StoredTensor]], f: BinaryIO,
                  dtype: str, progress: bool = False, clip: bool = False) -> tuple[int, dict[str, int]]:
    """Stream every stored tensor into one safetensors file open as ``f``, one group (the tensors
    built from the same parameters) in memory at a time; returns the parameter count and, with
    ``clip``, how many values were clipped in each tensor that needed it."""
    np_dtype = _numpy_dtype(dtype)
    entries = [(t.name, t.shape) for group in groups for t in group]
    header, _ = _safetensors_header(entries, DTYPES[dtype][1], np.dtype(np_dtype).itemsize)
    reader = TensorReader(source)
    bar = _progress_bar(len(entries), progress)
    count, clipped = 0, {}
    try:
        f.write(header)
        for group in groups:
            needed = dict.fromkeys(m.canonical for t in group for m in t.members)
            arrays = {c: reader.read(plan.tensors[c]) for c in needed}  # float32, canonical form
            for t in group:
                array = t.build(arrays)
                array, n_clipped = _fit(array, np_dtype, dtype, t.name, clip)
                if n_clipped:
                    clipped[t.name] = n_clipped
                _write_array(f, array)
                count += array.size
                if bar is not None:
                    bar.update(1)
            del arrays
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
        rope_scaling = None
        if (raw.get("gguf") or {}).get("rope_freqs"):  # Llama 3's scaling, kept as divisors
            plan, rope_scaling = _rope_scaling_back(source, plan, raw)
        hf_raw = _hf_config(raw, DTYPES[dtype][2], rope_scaling)
        try:
            target = find_mapping(hf_raw, "safetensors")
        except UnknownArchitectureError:
            raise UnknownArchitectureError(
                f"{source.path}: no safetensors mapping matches model_type {raw.get('model_type')!r}, "
                f"so there is no Hugging Face layout to write") from None
        groups = hf_layout(plan, target.mapping, hf_raw)
        refuse_overlap(source, out)
        with OutputFolder(out, force) as folder:
            n_params, clipped = folder.write(
                "model.safetensors", lambda f: write_weights(source, plan, groups, f, dtype, progress, clip))
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

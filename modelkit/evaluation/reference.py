"""Reference numbers for ``modelkit compare``: hidden states and logits on some token ids, read
from and written to a ``.npz`` file.

A reference file holds float32 ``[T, width]`` arrays under these names, any of them optional
but ``ids``:

===================== ==================================================================
``ids``               int64 [T], the token ids everything was computed on
``embed``             the input of layer 0 (embeddings, scaled, plus positions)
``block.{i}.{name}``  the output of block ``name`` (canonical block name) in layer ``i``
``layer.{i}``         the output of layer ``i`` (the residual stream it hands on)
``final_norm``        the final-normed hidden states the head reads
``logits``            [T, vocab]
``meta``              a JSON string: what produced the numbers
===================== ==================================================================

The golden fixtures' ``ref.npz`` files (``ids`` and ``logits``) are references too.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EvaluationError

# the names a reference may hold besides ids and meta
_STATE = re.compile(r"^(embed|final_norm|logits|layer\.\d+|block\.\d+\.[a-z_]+)$")


@dataclass
class Reference:
    """Token ids and the states computed on them, by name (see the module docstring)."""

    ids: np.ndarray
    states: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    where: str = ""

    @property
    def label(self) -> str:
        """What produced the numbers, for a report's first line."""
        made_by = self.meta.get("reference")
        return f"{made_by} ({self.where})" if made_by and self.where else (made_by or self.where or "reference")


def load_reference(path: str | Path) -> Reference:
    """Read a reference ``.npz`` file, checking its shape of things (not yet against a model)."""
    path = Path(path).expanduser()
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise EvaluationError(f"{path}: reference file not found") from None
    except IsADirectoryError:
        raise EvaluationError(f"{path}: is a folder, not a reference .npz file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise EvaluationError(f"{path}: not a reference .npz file ({str(exc).splitlines()[0][:120]})") from None
    ids = arrays.pop("ids", None)
    if ids is None:
        raise EvaluationError(f"{path}: no 'ids' array, so it is not a reference of modelkit compare")
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise EvaluationError(f"{path}: 'ids' must be a non-empty 1-D integer array, got shape "
                             f"{list(ids.shape)} {ids.dtype}")
    meta: dict[str, Any] = {}
    if "meta" in arrays:
        try:
            entry = arrays.pop("meta").reshape(-1)  # one string, saved as shape () or (1,)
            meta = json.loads(str(entry[0])) if entry.size == 1 else None
            if not isinstance(meta, dict):
                raise ValueError
        except ValueError:
            raise EvaluationError(f"{path}: 'meta' is not one JSON object string") from None
    states: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        if not _STATE.match(name):
            continue  # other arrays (a fixture's logits_step) are not states
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
            raise EvaluationError(f"{path}: '{name}' must be a 2-D float array, got shape {list(array.shape)} "
                                 f"{array.dtype}")
        if array.shape[0] != ids.size:
            raise EvaluationError(f"{path}: '{name}' has {array.shape[0]} rows but 'ids' has {ids.size} tokens; "
                                 "the file is inconsistent")
        states[name] = array.astype(np.float32, copy=False)
    if not states:
        raise EvaluationError(f"{path}: holds token ids but no hidden states or logits to compare")
    return Reference(ids.astype(np.int64), states, meta, str(path))


def check_fits(ref: Reference, vocab_size: int, hidden_size: int | None, n_layers: int) -> None:
    """Refuse a reference made for another model: ids or logits of another vocabulary, hidden
    states of another width, more layers than the model has."""
    top = int(ref.ids.max())
    if int(ref.ids.min()) < 0 or top >= vocab_size:
        raise EvaluationError(f"{ref.where}: the reference's token ids reach {top}, outside this model's "
                             f"vocabulary of {vocab_size}; it was made for another model")
    logits = ref.states.get("logits")
    if logits is not None and logits.shape[1] != vocab_size:
        raise EvaluationError(f"{ref.where}: the reference's logits have {logits.shape[1]} columns but this "
                             f"model's vocabulary has {vocab_size}; it was made for another model")
    for name, array in ref.states.items():
        if name.startswith(("layer.", "block.")) and int(name.split(".")[1]) >= n_layers:
            raise EvaluationError(f"{ref.where}: the reference has '{name}' but this model has {n_layers} layers; "
                                 "it was made for another model")
        residual = name == "embed" or name.startswith("layer.")  # the residual stream is hidden_size wide
        if hidden_size and residual and array.shape[1] != hidden_size:
            raise EvaluationError(f"{ref.where}: the reference's '{name}' is {array.shape[1]} wide but this "
                                 f"model's hidden size is {hidden_size}; it was made for another model")


def save_reference(path: str | Path, ids: np.ndarray, states: dict[str, np.ndarray],
                   meta: dict[str, Any]) -> Path:
    """Write a reference file (entries stamped with a fixed date, so reruns give the same
    bytes)."""
    path = Path(path).expanduser()
    arrays: dict[str, np.ndarray] = {"ids": np.asarray(ids, dtype=np.int64)}
    arrays.update({k: np.asarray(v, dtype=np.float32) for k, v in states.items()})
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    try:
        write_npz_deterministic(path, arrays)
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot write the reference ({exc.strerror})") from None
    return path


def write_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz whose bytes depend on the arrays only (no pickles): np.savez_compressed embeds
    zip timestamps, so the entries are written with a fixed date."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())

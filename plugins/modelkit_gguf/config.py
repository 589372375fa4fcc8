"""GGUF metadata -> a config.json-style dict with Hugging Face key names.

llama.cpp stores hyperparameters as ``{arch}.{key}`` (``llama.embedding_length``, ...; the key
names are gguf-py's ``gguf.Keys``). The weight source translates them to the names config.json
uses, through the architecture's row of :data:`~modelkit_gguf.families.FAMILIES`, so a GGUF
mapping reads the same fields as its safetensors twin and ``modelkit convert`` can write
config.json from them. What a GGUF does not store but llama.cpp decides in code (Gemma 3's
sliding-window pattern, Granite's layer kinds) is decided by the family's rule the same way.

Every ``{arch}.*`` key is also kept, nested by its dots, under ``"gguf"``
(``gguf.ssm.conv_kernel``, ``gguf.attention.head_count_kv``), so any mapping can read any of
them (``from: gguf.rope.dimension_count``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from gguf import MODEL_ARCH_NAMES, MODEL_TENSOR, TENSOR_NAMES, Keys

from modelkit import CheckpointError

from .families import FAMILIES, Family, family_for
from .metadata import Metadata, Tensors

# config.json name <- tokenizer metadata key
TOKEN_IDS = {
    "bos_token_id": Keys.Tokenizer.BOS_ID,
    "eos_token_id": Keys.Tokenizer.EOS_ID,
    "pad_token_id": Keys.Tokenizer.PAD_ID,
}


def tensor_name(kind: MODEL_TENSOR, suffix: str = "weight", layer: int = 0) -> str:
    """llama.cpp's name of a tensor (gguf-py's table): ``blk.0.attn_q.bias``, ``output.weight``."""
    return f"{TENSOR_NAMES[kind].format(bid=layer)}.{suffix}"


def same_for_every_layer(value: Any, key: str, path: Path) -> Any:
    """A per-layer array that holds one value, as that value (a plain value as it is)."""
    if isinstance(value, list):
        if value and all(v == value[0] for v in value):
            return value[0]
        raise CheckpointError(f"{path}: '{key}' differs between layers ({value[:8]}...); "
                              f"modelkit's GGUF mappings need one value for every layer")
    return value


def metadata_tree(meta: Mapping[str, Any], arch: str, path: Path) -> dict[str, Any]:
    """Every ``{arch}.*`` key, nested by its dots: ``{"ssm": {"conv_kernel": 4}, ...}``."""
    tree: dict[str, Any] = {}
    prefix = f"{arch}."
    for key in sorted(k for k in meta if k.startswith(prefix)):
        *groups, leaf = key[len(prefix):].split(".")
        node = tree
        for group in groups:
            node = node.setdefault(group, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"{path}: metadata key '{key}' sits inside the value of another key")
        if isinstance(node.get(leaf), dict):
            raise CheckpointError(f"{path}: metadata key '{key}' is both a value and a group of keys")
        node[leaf] = meta[key]
    return tree


def rope_scaling(m: Metadata) -> dict[str, Any] | None:
    """``rope_scaling`` for config.json from ``rope.scaling.*`` (or the older ``rope.scale_linear``)."""
    kind, factor = m.get(Keys.Rope.SCALING_TYPE), m.get(Keys.Rope.SCALING_FACTOR)
    if kind is None and m.get("{arch}.rope.scale_linear") is not None:  # older files
        kind, factor = "linear", m.get("{arch}.rope.scale_linear")
    if kind in (None, "none") or factor in (None, 1.0):
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "factor": factor}
    original = m.get(Keys.Rope.SCALING_ORIG_CTX_LEN)
    if original is not None:
        scaling["original_max_position_embeddings"] = original
    return scaling  # types other than linear are refused by the rotary block, by name


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf")
    except PackageNotFoundError:
        return "unknown version"


def _identity(family: Family | None, arch: str) -> dict[str, Any]:
    if family is None:  # no family: a user mapping may still serve it by this model_type
        return {"model_type": arch}
    return {"model_type": family.model_type, "architectures": [family.hf_class]}


def config_from_metadata(meta: Mapping[str, Any], tensors: Mapping[str, tuple[int, ...]] | Collection[str],
                         path: Path) -> dict[str, Any]:
    """The model's config as config.json would spell it, read from GGUF metadata
    (:attr:`GGUFFile.metadata <modelkit_gguf.reader.GGUFFile.metadata>`) and the tensor table
    (name -> shape in NumPy order, or just the names)."""
    arch = meta.get(Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{path}: no 'general.architecture' metadata; not a model GGUF")
    m = Metadata(meta, arch, path)
    family = family_for(arch, m)
    if family is None and arch not in MODEL_ARCH_NAMES.values():
        # no tensor name map: neither llama.cpp's names nor a mapping derived from them apply
        raise CheckpointError(f"{path}: metadata key 'general.architecture' is {arch[:80]!r}, an architecture the "
                              f"installed gguf package ({_gguf_version()}) has no tensor names for; modelkit "
                              f"reads GGUF files of {', '.join(sorted(FAMILIES))}")
    present = Tensors(tensors)
    cfg = _identity(family, arch)
    table = family.metadata_table() if family is not None else Family.common_table()
    for name, template in table.items():
        value = m.get(template)
        if value is not None:
            cfg[name] = same_for_every_layer(value, m.key(template), path)
    if "vocab_size" not in cfg:
        tokens = meta.get(Keys.Tokenizer.LIST)
        if isinstance(tokens, list):
            cfg["vocab_size"] = len(tokens)
    scaling = rope_scaling(m)
    if scaling is not None:
        cfg["rope_scaling"] = scaling
    cfg["tie_word_embeddings"] = tensor_name(MODEL_TENSOR.OUTPUT) not in present
    if family is not None:
        cfg.update(family.constants)
        for key, kind in family.presence.items():
            cfg[key] = present.has(kind)
        for rule in family.rules:
            rule(m, cfg, present)
    for name, key in TOKEN_IDS.items():
        value = meta.get(key)
        if isinstance(value, int):
            cfg[name] = value
    cfg["gguf"] = {
        **metadata_tree(meta, arch, path),
        "architecture": arch,
        # llama.cpp's Llama 3.1+ rope scaling: per-dimension frequency factors as a tensor
        "rope_freqs": tensor_name(MODEL_TENSOR.ROPE_FREQS) in present,
        "name": meta.get(Keys.General.NAME),
    }
    return cfg

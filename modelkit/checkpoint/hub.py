"""Resolving ``--model``: a local folder or file, or a Hugging Face hub repo id (through huggingface_hub).

A repo id is looked up in the local Hugging Face cache first (``HF_HUB_CACHE``; works offline),
then downloaded. Only what modelkit reads is fetched: configs, safetensors weights and their
index, tokenizer files and chat templates; never pickles, never code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import CheckpointError

# what modelkit needs from a repo: never pickles, never code
ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "chat_template.jinja", "chat_template.json"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# names of files, not of hub repos: a missing "models/x.gguf" is a local path
LOCAL_SUFFIXES = (".gguf", ".safetensors", ".json", ".yaml", ".yml", ".bin", ".pt", ".pth", ".jinja")


def looks_like_repo_id(text: str) -> bool:
    """True for ``org/name`` strings that are not an existing local path."""
    return bool(_REPO_ID.match(text)) and not Path(text).exists()


def resolve_model_path(model: str, revision: str | None = None,
                       notice: Callable[[str], None] | None = None) -> Path:
    """A local path for ``model``: as given when it exists, else the hub repo's snapshot from the
    local Hugging Face cache (offline), else downloaded (safetensors and tokenizer files only).

    A missing path that is plainly local (``./x``, a file name such as ``x.gguf``, or under a
    folder that exists here) is an error at once, never a hub look-up. ``notice`` is told, before
    anything is downloaded, that ``model`` is not a local path.
    """
    path = Path(model).expanduser()
    if path.exists():
        return path
    if not looks_like_repo_id(model):
        raise CheckpointError(f"{model}: no such file or folder")
    first = Path(model).parts[0]
    if Path(first).is_dir():
        raise CheckpointError(f"{model}: no such file or folder (as '{first}' is a folder here, this is "
                              f"read as a path, not as a hub repo id)")
    if model.lower().endswith(LOCAL_SUFFIXES):
        raise CheckpointError(f"{model}: no such file or folder")
    cached = cached_snapshot(model, revision)
    if cached is not None:
        return cached
    if notice is not None:
        notice(f"{model}: no such file or folder here; looking for the hub repo {model}")
    try:
        return download(model, revision=revision)
    except CheckpointError as exc:
        message = str(exc)
        rest = message.split(": ", 1)[1] if ": " in message else message
        raise CheckpointError(f"{model}: no such file or folder here; as a hub repo id: {rest}") from None


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The repo's snapshot folder in the local Hugging Face cache, or None (no network)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                        local_files_only=True))
    except Exception:  # any miss (absent, incomplete, bad revision) means: not usable offline
        return None
    return folder if (folder / "config.json").is_file() else None


def download(repo_id: str, *, revision: str | None = None, local_dir: str | Path | None = None,
             include: Sequence[str] = ()) -> Path:
    """Fetch what modelkit needs from a hub repo (plus files matching ``include``) with
    huggingface_hub's progress bars; returns the snapshot folder (or ``local_dir``)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    if not _REPO_ID.match(repo_id):
        raise CheckpointError(f"{repo_id}: not a hub repo id (expected org/name)")
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_dir=local_dir,
                                        allow_patterns=ALLOW_PATTERNS + list(include)))
    except GatedRepoError:
        raise CheckpointError(f"{where}: the repository is gated; accept its terms on the hub and set "
                              "HF_TOKEN (or run `hf auth login`)") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{where}: no such repository on the hub (or it is private)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{where}: no such revision in the repository") from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise CheckpointError(f"{where}: not in the local cache and could not be downloaded "
                              f"({_first_line(exc)})") from None
    _check_downloaded(folder, where)
    return folder


def _check_downloaded(folder: Path, where: str) -> None:
    """A downloaded folder must be one a weight source reads (safetensors, or a format a plugin
    adds, such as a single GGUF file fetched with --include)."""
    from ..plugins import registry

    others = [cls for name, cls in registry().weight_sources.items() if name != "safetensors"]
    if any(cls.can_open(folder) for cls in others):
        return
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{where}: the repository has no config.json; is it a transformers model?")
    if not any(folder.glob("*.safetensors")):
        raise CheckpointError(f"{where}: the repository has no *.safetensors weights "
                              "(modelkit never loads pickle checkpoints such as pytorch_model.bin)")


def _first_line(exc: Any) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

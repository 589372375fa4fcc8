"""Resolving ``--model``: a local folder or file, or a Hugging Face hub repo id."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import CheckpointError

# what modelkit needs from a repo: never pickles, never code
ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "chat_template.jinja", "chat_template.json"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_repo_id(text: str) -> bool:
    """True for ``org/name`` strings that are not an existing local path."""
    return bool(_REPO_ID.match(text)) and not Path(text).exists()


def resolve_model_path(model: str, revision: str | None = None) -> Path:
    """A local path for ``model``: as given when it exists, else the hub repo's snapshot from the
    local Hugging Face cache (offline), else downloaded (safetensors and tokenizer files only)."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    if not looks_like_repo_id(model):
        raise CheckpointError(f"{model}: no such file or folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                      local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except RepositoryNotFoundError:
        raise CheckpointError(f"{model}: no such repository on the hub (or it is private)") from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{model}: not in the local cache and could not be downloaded ({first})") from None

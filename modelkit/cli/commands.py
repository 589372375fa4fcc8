"""The small commands: `archs`, `validate` and `download`."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def cmd_archs(args: argparse.Namespace) -> int:
    """List every architecture and the plugin and mapping file that provide it."""
    from ..loading import describe_architectures
    from ..plugins import registry

    rows = describe_architectures(registry())
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['origin']:<18}  model_type: {r['model_type'] or '-':<28}"
              f"  source: {r['source']:<12}  {r['file']}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a checkpoint against its mapping; print the full report."""
    from ..loading import inspect, resolve_path
    from ..loading.values import non_finite_values

    source, choice, plan = inspect(resolve_path(args.model, args.revision, progress=True), args.arch, args.mapping)
    try:
        bad_values = non_finite_values(source, plan) if args.values else []
        unread = choice.mapping.unread_config_keys(source.config())
        tokenizer_problem = _tokenizer_problem(source)
    finally:
        source.close()
    report = plan.report
    ok = report.ok and not bad_values
    args.exit_status = 0 if ok else 1  # kept if stdout closes early (`validate ... | head`)
    print(f"architecture {choice.mapping.name} ({choice.origin}: {choice.file})")
    print(f"{len(plan.layers)} layers, {len(plan.tensors)} tensors planned")
    if unread:
        # not an error (most unknown keys are harmless), but a key that changes the math and that
        # the mapping does not read is one it silently ignores: worth a reader's look
        print(f"note: config keys this mapping does not read: {', '.join(unread)}")
    if tokenizer_problem:
        print(f"warning: {tokenizer_problem}")
    if ok:
        checked = "; every value is finite" if args.values else ""
        print(f"ok: every tensor is mapped, present and of the expected shape{checked}")
        return 0
    for line in report.lines() + bad_values:
        print(line)
    counts = report.counts() + (f", {len(bad_values)} with NaN or infinite values" if bad_values else "")
    print(counts, file=sys.stderr)
    return 1


def _tokenizer_problem(source: Any) -> str | None:
    """Why `run` and `chat` could not encode text with this checkpoint, or None."""
    from ..errors import ModelkitError

    try:
        tokenizer = source.tokenizer()
    except ModelkitError as exc:
        return f"the tokenizer cannot be used, so `modelkit run` and `chat` would fail: {str(exc).splitlines()[0]}"
    if tokenizer is None:
        return (f"{source.path}: no tokenizer (tokenizer.json), so `modelkit run` and `chat` cannot encode "
                f"text; copy the model's tokenizer files into the folder (the weights load without them)")
    return None


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch a hub repo's configs, safetensors weights and tokenizer files; print the folder."""
    from ..checkpoint.hub import download

    print(download(args.repo_id, revision=args.revision, local_dir=args.local_dir, include=args.include))
    return 0

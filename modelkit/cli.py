"""The `modelkit` command: a thin layer that parses arguments and calls the library.

User errors (:class:`modelkit.errors.ModelkitError`) print one line on stderr and exit 1 (2 for
bad arguments); nothing from a model folder is ever executed. Heavy modules (numpy, the
loader, plugins) are imported inside the commands so ``modelkit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .errors import ModelkitError

EXIT_USER_ERROR = 1


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True,
                   help="model folder (config.json + *.safetensors), GGUF file, or hub repo id org/name")
    p.add_argument("--arch", help="architecture name (default: detected from config.json)")
    p.add_argument("--mapping", help="YAML mapping file to use instead of the registered ones")
    p.add_argument("--revision", help="hub branch, tag or commit (with a repo id; default main)")


def cmd_archs(args: argparse.Namespace) -> int:
    """List every architecture and the plugin and mapping file that provide it."""
    from .loader import describe_architectures

    rows = describe_architectures()
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['origin']:<18}  model_type: {r['model_type'] or '-':<28}"
              f"  source: {r['source']:<12}  {r['file']}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a checkpoint against its mapping; print the full report."""
    from .hub import resolve_model_path
    from .loader import inspect, non_finite_values

    source, choice, plan = inspect(resolve_model_path(args.model, args.revision), args.arch, args.mapping)
    try:
        bad_values = non_finite_values(source, plan) if args.values else []
    finally:
        source.close()
    report = plan.report
    n = len(plan.tensors)
    print(f"architecture {choice.mapping.name} ({choice.origin}: {choice.file})")
    print(f"{len(plan.variants)} layers, {n} tensors planned")
    if report.ok and not bad_values:
        checked = "; every value is finite" if args.values else ""
        print(f"ok: every tensor is mapped, present and of the expected shape{checked}")
        return 0
    for line in report.lines() + bad_values:
        print(line)
    counts = report.counts() + (f", {len(bad_values)} with NaN or infinite values" if bad_values else "")
    print(counts, file=sys.stderr)
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    """Generate text from a prompt and stream it to stdout."""
    from .run import run

    return run(args)


def cmd_chat(args: argparse.Namespace) -> int:
    """Interactive multi-turn chat through the model's chat template."""
    from .chat import run_chat

    return run_chat(args)


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch a hub repo's configs, safetensors weights and tokenizer files; print the folder."""
    from .hub import download

    print(download(args.repo_id, revision=args.revision, local_dir=args.local_dir, include=args.include))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Write a checkpoint (a GGUF file) as a Hugging Face folder; print what was written."""
    from .convert import convert
    from .hub import resolve_model_path

    done = convert(resolve_model_path(args.src), args.out, dtype=args.dtype, arch=args.arch,
                   mapping=args.mapping, force=args.force, progress=True)
    print(f"{done['folder']}: {done['parameters']:,} parameters as {done['dtype']} "
          f"({done['source_arch']} -> {done['target_arch']}); {', '.join(done['files'])}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelkit",
        description="Load language-model checkpoints of many architectures and run them in NumPy.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("archs", help="list architectures and the mapping files that provide them")
    p.set_defaults(func=cmd_archs)

    p = sub.add_parser("validate", help="check that a checkpoint fits its mapping (full report)")
    _add_model_args(p)
    p.add_argument("--values", action="store_true",
                   help="also read every tensor and report NaN or infinite values (as slow as loading)")
    p.set_defaults(func=cmd_validate)

    from .run import add_generation_args, add_run_args

    p = sub.add_parser("run", help="generate text from a prompt (raw continuation, or --chat)")
    _add_model_args(p)
    add_run_args(p)
    add_generation_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="interactive chat through the model's chat template")
    _add_model_args(p)
    p.add_argument("--system", metavar="TEXT", help="system message for the conversation")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="after each reply, print token counts (reused / prefilled) and speeds on stderr")
    add_generation_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("download", help="fetch a model from the Hugging Face hub into the local cache")
    p.add_argument("repo_id", metavar="ORG/NAME", help="hub repo id")
    p.add_argument("--revision", help="branch, tag or commit (default main)")
    p.add_argument("--local-dir", metavar="DIR", help="write the files into DIR instead of the cache")
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="also fetch files matching PATTERN (e.g. '*Q4_K_M.gguf'); repeatable")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("convert", help="write a GGUF file as a Hugging Face folder (safetensors)")
    p.add_argument("src", metavar="SRC", help="GGUF file (or any checkpoint modelkit loads)")
    p.add_argument("out", metavar="OUT", help="output folder (created; must be empty unless --force)")
    p.add_argument("--dtype", default="float32", choices=["float32", "f32", "bfloat16", "bf16", "float16", "f16"],
                   help="tensor dtype in model.safetensors (default float32)")
    p.add_argument("--arch", help="architecture of SRC (default: detected)")
    p.add_argument("--mapping", help="YAML mapping file for SRC instead of the registered ones")
    p.add_argument("--force", action="store_true", help="overwrite files in a non-empty OUT")
    p.set_defaults(func=cmd_convert)
    return parser


def _version() -> str:
    from . import __version__

    return f"modelkit {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``modelkit`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return func(args)
    except ModelkitError as exc:
        _error(str(exc))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except MemoryError:
        _error("out of memory: the model does not fit in this machine's RAM")
        return EXIT_USER_ERROR
    except BrokenPipeError:
        return 0


def _error(message: str) -> None:
    lines = message.strip().splitlines() or ["error"]
    # one line, except a tensor report, which may use up to five
    limit = 5 if len(lines) > 1 and "modelkit validate" in message else 1
    shown = lines[:limit]
    print("modelkit: error: " + "\n  ".join(s.strip() for s in shown), file=sys.stderr)


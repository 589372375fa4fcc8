"""The `modelkit` command: a thin layer that parses arguments and calls the library.

User errors (:class:`modelkit.ModelkitError`) print one line on stderr and exit 1 (2 for bad
arguments); nothing from a model folder is ever executed. Heavy modules (numpy, the loader,
plugin block kinds) are imported inside the commands so ``modelkit --help`` stays fast.
Plugins add commands through the ``register_commands`` hook.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from ..errors import ModelkitError
from .commands import cmd_archs, cmd_download, cmd_validate
from .common import EXIT_INTERRUPTED, add_generation_args, add_model_args, add_run_args, print_error
from .evaluate import add_compare_args, add_perplexity_args, cmd_compare, cmd_perplexity
from .streams import Terminated, fill_closed_descriptors, guarded_streams

EXIT_USER_ERROR = 1
EXIT_TERMINATED = 128 + 15  # as a shell reports a process SIGTERM ended
BUILTIN_COMMANDS = {"archs", "validate", "run", "chat", "download", "compare", "perplexity"}


def cmd_run(args: argparse.Namespace) -> int:
    """Generate text from a prompt and stream it to stdout."""
    from .run import run

    return run(args)


def cmd_chat(args: argparse.Namespace) -> int:
    """Interactive multi-turn chat through the model's chat template."""
    from .chat import run_chat

    return run_chat(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: built-in commands, then those plugins register."""
    parser = argparse.ArgumentParser(
        prog="modelkit",
        description="Load language-model checkpoints of many architectures and run them in NumPy.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("archs", help="list architectures and the mapping files that provide them")
    p.set_defaults(func=cmd_archs)

    p = sub.add_parser("validate", help="check that a checkpoint fits its mapping (full report)")
    add_model_args(p)
    p.add_argument("--values", action="store_true",
                   help="also read every tensor and report NaN or infinite values (as slow as loading)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="generate text from a prompt (raw continuation, or --chat)")
    add_model_args(p)
    add_run_args(p)
    add_generation_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="interactive chat through the model's chat template")
    add_model_args(p)
    p.add_argument("--system", metavar="TEXT", help="system message for the conversation")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="after each reply, print token counts (reused / prefilled) and speeds on stderr")
    add_generation_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("compare", help="hidden states layer by layer and block by block against transformers "
                                       "or a reference file; names the first block that diverges")
    add_compare_args(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("perplexity", help="perplexity over a text file (llama.cpp's chunks or a sliding window)")
    add_perplexity_args(p)
    p.set_defaults(func=cmd_perplexity)

    p = sub.add_parser("download", help="fetch a model from the Hugging Face hub into the local cache")
    p.add_argument("repo_id", metavar="ORG/NAME", help="hub repo id")
    p.add_argument("--revision", help="branch, tag or commit (default main)")
    p.add_argument("--local-dir", metavar="DIR", help="write the files into DIR instead of the cache")
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="also fetch files matching PATTERN (e.g. '*Q4_K_M.gguf'); repeatable")
    p.set_defaults(func=cmd_download)

    from ..plugins import commands

    for command in commands(BUILTIN_COMMANDS).values():
        p = sub.add_parser(command.name, help=command.help)
        command.configure(p)
        p.set_defaults(func=command.run)
    return parser


def _version() -> str:
    from .. import __version__

    return f"modelkit {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``modelkit`` command; returns the exit code."""
    fill_closed_descriptors()
    try:
        parser = build_parser()
    except ModelkitError as exc:  # a broken plugin
        print_error(str(exc))
        return EXIT_USER_ERROR
    args: argparse.Namespace | None = None
    try:
        with guarded_streams():
            args = parser.parse_args(argv)  # --help and --version print here, then exit
            func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
            if func is None:
                parser.print_help()
                return 0
            return func(args)
    except ModelkitError as exc:
        print_error(str(exc))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if sys.stderr.isatty():
            print(file=sys.stderr)  # the terminal echoed ^C mid-line
        print_error("interrupted")
        return EXIT_INTERRUPTED
    except Terminated:
        print_error("terminated (SIGTERM)")
        return EXIT_TERMINATED
    except MemoryError as exc:  # a shortage no step of modelkit named (those raise OutOfMemoryError)
        lines = str(exc).strip().splitlines()
        print_error(f"out of memory ({lines[0][:300]})" if lines else "out of memory")
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # the reader went away (`modelkit validate ... | head`): keep the command's verdict, and
        # stop Python's own flush at exit from failing on the closed pipe
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return int(getattr(args, "exit_status", 0))

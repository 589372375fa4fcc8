"""What the commands share: model and generation flags, reading prompts, loading with timing,
the stats line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..checkpoint.files import read_regular_file
from ..errors import GenerationError, TokenizerError
from .streams import stdin_or_error

DEFAULT_MAX_TOKENS = 256
EXIT_INTERRUPTED = 130  # as a shell reports a process Ctrl-C (SIGINT) ended
# a prompt larger than this is refused before it is decoded (about 4 million tokens, beyond
# every model's context); a prompt file must be a regular file
MAX_PROMPT_BYTES = 16 << 20
# flag -> the SamplingOptions field it sets, so an error names what the user typed
SAMPLING_FLAGS = {"--temperature": "temperature", "--top-k": "top_k", "--top-p": "top_p", "--min-p": "min_p",
                  "--repetition-penalty": "repetition_penalty", "--seed": "seed"}


def print_error(message: str) -> None:
    """``modelkit: error: MESSAGE`` on stderr: one line, except a tensor report, which may use
    up to five."""
    lines = message.strip().splitlines() or ["error"]
    limit = 5 if len(lines) > 1 and "modelkit validate" in message else 1
    shown = lines[:limit]
    print("modelkit: error: " + "\n  ".join(s.strip() for s in shown), file=sys.stderr)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model and the flags that choose how to read it."""
    p.add_argument("--model", "-m", required=True,
                   help="model folder (config.json + *.safetensors), GGUF file, or hub repo id org/name")
    p.add_argument("--arch", help="architecture name (default: detected from config.json)")
    p.add_argument("--mapping", help="YAML mapping file to use instead of the registered ones")
    p.add_argument("--revision", help="hub branch, tag or commit (with a repo id; default main)")


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that generate (run, chat)."""
    g = p.add_argument_group("generation")
    g.add_argument("--max-tokens", "-n", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                   help=f"new tokens at most per reply (default {DEFAULT_MAX_TOKENS})")
    g.add_argument("--temperature", "-t", type=float, default=None, metavar="T",
                   help="sampling temperature; 0 is greedy (default: generation_config.json, else 0)")
    g.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="sample among the K most likely tokens (0: off)")
    g.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="sample among the fewest tokens holding probability P (1: off)")
    g.add_argument("--min-p", type=float, default=None, metavar="P",
                   help="drop tokens less likely than P times the most likely one (0: off)")
    g.add_argument("--repetition-penalty", type=float, default=None, metavar="R",
                   help="penalise tokens already in the context (1: off; 1.1 is mild)")
    g.add_argument("--seed", type=int, default=None, help="random seed, for reproducible sampling")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when the output contains TEXT (not printed); repeatable")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Flags of `modelkit run` beyond the generation ones."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", "-p", metavar="TEXT", help="prompt text; '-' reads standard input")
    src.add_argument("--prompt-file", "-f", metavar="PATH", help="read the prompt from a UTF-8 file ('-': stdin)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt in the model's chat template as a user message")
    p.add_argument("--system", metavar="TEXT", help="system message (with --chat)")
    p.add_argument("--quiet", "-q", action="store_true", help="no timing line on stderr")
    p.add_argument("--logprobs", type=int, default=None, metavar="K",
                   help="after the text, print each new token's log-probability and the K most likely "
                        "tokens at its position (0: the chosen token's only)")


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword options for :func:`modelkit.generation.loop.stream` from parsed flags."""
    from ..generation.options import check_option

    if args.max_tokens < 1:
        raise GenerationError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    for flag, field in SAMPLING_FLAGS.items():
        value = getattr(args, field)
        if value is not None:
            check_option(field, value, flag)
    return dict(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed, stop_strings=args.stop or None)


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt from --prompt TEXT, --prompt - (stdin) or --prompt-file PATH.

    A prompt read from a file or stdin loses one trailing newline (editors add one)."""
    if args.prompt is not None and args.prompt != "-":
        return utf8_text(args.prompt, "--prompt")
    text = read_text_file("-" if args.prompt == "-" else args.prompt_file, "prompt",
                          hint="give the prompt with --prompt TEXT or --prompt-file PATH")
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    return text


def read_text_file(name: str, what: str, limit: int | None = None, hint: str = "") -> str:
    """The UTF-8 text of file ``name`` ('-': standard input) without a byte-order mark, at most
    ``limit`` bytes (default MAX_PROMPT_BYTES); every failure is one GenerationError naming the file (``what`` says what
    the text is for: "prompt", "text"; ``hint``, how else to give it when stdin is closed)."""
    limit = MAX_PROMPT_BYTES if limit is None else limit
    if name == "-":
        where = "standard input"
        stdin = stdin_or_error(hint or f"give the {what} as a file")
        data = stdin.buffer.read(limit + 1)
        if len(data) > limit:
            raise GenerationError(f"standard input: the {what} is larger than {limit >> 20} MB")
    else:
        path = Path(name).expanduser()
        where = str(path)
        data = read_regular_file(path, limit, GenerationError, f"{what} file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GenerationError(f"{where}: the {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} "
                              f"at offset {exc.start})") from None
    return text.removeprefix("\ufeff")


def utf8_text(text: str, where: str) -> str:
    """``text`` unchanged, or a GenerationError when it carries bytes that are not UTF-8 (Python
    passes such bytes from the command line or a non-UTF-8 terminal as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        byte = f" (byte 0x{code - 0xDC00:02x})" if 0xDC80 <= code <= 0xDCFF else ""
        raise GenerationError(f"{where}: not UTF-8 text{byte}") from None
    return text


def load_model(args: argparse.Namespace) -> tuple[Any, float]:
    """The model named by --model (folder, file or hub repo id) and the seconds loading took;
    a progress bar shows on a terminal."""
    from ..loading import load

    t0 = time.perf_counter()
    model = load(args.model, args.arch, mapping=args.mapping, revision=getattr(args, "revision", None),
                 progress=True)
    if model.tokenizer is None:
        raise TokenizerError(f"{args.model}: no tokenizer.json, so text cannot be encoded")
    return model, time.perf_counter() - t0


def stats_line(stats: Any, load_s: float | None = None, lead: str | None = None) -> str:
    """One line of counts and speeds for stderr; ``lead`` replaces the prompt-token count."""
    parts = [lead if lead is not None else f"{stats.prompt_tokens} prompt tokens"]
    if load_s is not None:
        parts.append(f"load {load_s:.2f} s")
    parts.append(f"prefill {stats.prefill_tps:.1f} tok/s")
    parts.append(f"decode {stats.decode_tps:.1f} tok/s")
    parts.append(f"{stats.new_tokens} tokens ({stats.stop_reason or 'done'})")
    return "[" + " | ".join(parts) + "]"


def prepare_stdout() -> None:
    """Never fail mid-reply on a character the terminal's encoding lacks."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="replace")

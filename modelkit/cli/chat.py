"""`modelkit chat`: an interactive session on stdin / stdout over a :class:`ChatSession`."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from ..errors import GenerationError, ModelkitError
from .common import generation_options, load_model, prepare_stdout, stats_line, utf8_text
from .streams import OutputError, stdin_or_error

HELP = "commands: /reset clears the conversation, /exit (or Ctrl-D) ends the session; Ctrl-C stops a reply"


def _read_line(interactive: bool) -> str | None:
    """One line of input; None at end of input. Input that is not UTF-8 is a GenerationError."""
    try:
        if interactive:
            try:
                line = input(">>> ")
            except EOFError:
                return None
        else:
            line = sys.stdin.readline()
            if line == "":
                return None
            line = line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise GenerationError(f"standard input: not UTF-8 text (byte 0x{exc.object[exc.start]:02x})") from None
    return utf8_text(line, "standard input")  # a UTF-8-mode stdin passes bad bytes on as surrogates


def run_chat(args: argparse.Namespace) -> int:
    """`modelkit chat`: an interactive session on stdin / stdout; stats on stderr with --verbose."""
    from ..generation.chat import ChatSession
    from ..generation.loop import GenerationStats
    from ..text.chat_template import apply_chat_template

    stdin_or_error("chat reads its messages there (for one prompt: modelkit run --prompt TEXT)")
    options = generation_options(args)
    system = utf8_text(args.system, "--system") if args.system is not None else None
    model, load_s = load_model(args)
    # render a first turn before reading any input: a template that is missing, broken or
    # stopped by the sandbox ends the command (exit 1) instead of failing every turn
    first = [{"role": "system", "content": system}] if system is not None else []
    apply_chat_template(model.tokenizer, first + [{"role": "user", "content": "Hello"}])
    session = ChatSession(model, system=system, **options)
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        print(f"{model.name} loaded in {load_s:.1f} s; {HELP}", file=sys.stderr)
    prepare_stdout()
    interrupted = False

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True

    turn = 0
    while True:
        try:
            line = _read_line(interactive)
        except KeyboardInterrupt:  # Ctrl-C at the prompt ends the session
            print(file=sys.stderr)
            break
        if line is None:
            break
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit", "/bye"):
            break
        if command == "/reset":
            session.reset()
            print("[conversation cleared]", file=sys.stderr)
            continue
        if command in ("/help", "/?"):
            print(HELP, file=sys.stderr)
            continue
        if command.startswith("/") and " " not in command:
            print(f"unknown command {command}; {HELP}", file=sys.stderr)
            continue
        turn += 1
        stats = GenerationStats()
        interrupted = False
        previous = signal.signal(signal.SIGINT, on_sigint)  # Ctrl-C now stops the reply only
        try:
            for piece in session.send(line, stats=stats, should_stop=lambda: interrupted):
                if piece.text:
                    sys.stdout.write(piece.text)
                    sys.stdout.flush()
        except OutputError:  # stdout cannot be written: the session cannot go on
            raise
        except ModelkitError as exc:
            print(f"modelkit: error: {str(exc).splitlines()[0]} (/reset starts over)", file=sys.stderr)
            continue
        finally:
            signal.signal(signal.SIGINT, previous)
            sys.stdout.write("\n")
            sys.stdout.flush()
        if args.verbose:
            lead = f"turn {turn}: reused {stats.cached_tokens} cached tokens, prefilled {stats.prompt_tokens}"
            print(stats_line(stats, lead=lead), file=sys.stderr)
        elif stats.stop_reason == "interrupted":
            print("[interrupted]", file=sys.stderr)
    return 0

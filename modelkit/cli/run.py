"""`modelkit run`: load, encode the prompt (raw, or through the chat template), stream the text."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import GenerationError
from .common import (EXIT_INTERRUPTED, generation_options, load_model, prepare_stdout, print_error, read_prompt,
                     stats_line, utf8_text)


def run(args: argparse.Namespace) -> int:
    """`modelkit run`: stream the continuation (or the chat reply) of one prompt to stdout."""
    from ..generation.loop import GenerationStats
    from ..text.chat_template import chat_prompt_ids

    if args.system is not None and not args.chat:
        raise GenerationError("--system needs --chat (raw prompts have no system message)")
    options = generation_options(args)
    if args.logprobs is not None and args.logprobs < 0:
        raise GenerationError(f"--logprobs must be at least 0, got {args.logprobs}")
    prompt = read_prompt(args)
    model, load_s = load_model(args)
    tok = model.tokenizer
    if args.chat:
        messages = ([{"role": "system", "content": utf8_text(args.system, "--system")}]
                    if args.system is not None else [])
        ids = chat_prompt_ids(tok, messages + [{"role": "user", "content": prompt}])
    else:
        ids = tok.encode(prompt)
    if not ids:
        raise GenerationError("the prompt encodes to no tokens; give some text")
    stats = GenerationStats()
    prepare_stdout()
    scored = []
    extra = {} if args.logprobs is None else {"logprobs": args.logprobs}
    pieces = model.stream(ids, stats=stats, **options, **extra)
    try:
        for piece in pieces:
            scored += piece.logprobs
            if piece.text:
                sys.stdout.write(piece.text)
                sys.stdout.flush()
    except KeyboardInterrupt:
        return _interrupted(args, pieces, stats, load_s)
    sys.stdout.write("\n")
    if args.logprobs is not None:
        for line in logprob_lines(tok, scored, args.logprobs):
            sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if not args.quiet:
        print(stats_line(stats, load_s), file=sys.stderr)
    return 0


def _interrupted(args: argparse.Namespace, pieces: Any, stats: Any, load_s: float) -> int:
    """Ctrl-C while generating: end the text's line (the terminal echoed ^C after it), show the
    timing of what was done, then say why it stopped."""
    pieces.close()  # the generator's own cleanup fills in the decode time
    stats.stop_reason = "interrupted"
    sys.stdout.write("\n")
    sys.stdout.flush()
    if sys.stderr.isatty() and not sys.stdout.isatty():
        print(file=sys.stderr)  # the text went elsewhere; the ^C is on the terminal's line
    if not args.quiet:
        print(stats_line(stats, load_s), file=sys.stderr)
    print_error("interrupted")
    return EXIT_INTERRUPTED


def logprob_lines(tok: Any, scored: list[Any], k: int) -> list[str]:
    """A table of the generated tokens: each with its log-probability and the k most likely
    tokens at its position (JSON-quoted, so spaces and newlines show)."""
    def shown(token: int) -> str:
        text = tok.decode([token], skip_special_tokens=False)
        if "\ufffd" in text:  # a piece of a UTF-8 character (byte fallback): show the token itself
            text = tok.id_to_token(token) or text
        text = json.dumps(text, ensure_ascii=False)
        return text.replace("\x7f", "\\u007f")  # the one control character JSON leaves raw

    head = "#\ttoken\tlogprob" + (f"\ttop {k}" if k else "")
    lines = ["", head]
    for n, s in enumerate(scored, 1):
        top = " | ".join(f"{shown(t)} {lp:.4f}" for t, lp in s.top)
        lines.append(f"{n}\t{shown(s.token)}\t{s.logprob:.4f}" + (f"\t{top}" if k else ""))
    return lines

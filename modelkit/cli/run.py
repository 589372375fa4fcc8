"""`modelkit run`: load, encode the prompt (raw, or through the chat template), stream the text."""

from __future__ import annotations

import argparse
import sys

from ..errors import GenerationError
from .common import generation_options, load_model, prepare_stdout, read_prompt, stats_line, utf8_text


def run(args: argparse.Namespace) -> int:
    """`modelkit run`: stream the continuation (or the chat reply) of one prompt to stdout."""
    from ..generation.loop import GenerationStats
    from ..text.chat_template import chat_prompt_ids

    if args.system is not None and not args.chat:
        raise GenerationError("--system needs --chat (raw prompts have no system message)")
    options = generation_options(args)
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
    for piece in model.stream(ids, stats=stats, **options):
        if piece.text:
            sys.stdout.write(piece.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not args.quiet:
        print(stats_line(stats, load_s), file=sys.stderr)
    return 0

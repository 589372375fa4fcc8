"""`modelkit compare` and `modelkit perplexity`: flags, then the library (modelkit.evaluation)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import EvaluationError
from .common import add_model_args, load_model, read_text_file, utf8_text

DEFAULT_PROMPT = "The quick brown fox jumps over the lazy dog. It barked, and the fox ran into the woods."
DEFAULT_CTX = 512
MAX_TEXT_BYTES = 256 << 20  # a perplexity text: wikitext-2's test split is 1.3 MB


def add_compare_args(p: argparse.ArgumentParser) -> None:
    """The flags of `modelkit compare`."""
    add_model_args(p)
    p.add_argument("--reference", default="transformers", metavar="transformers|FILE.npz",
                   help="what to compare with: transformers run on the same folder (default), or a "
                        "reference file written by --save-reference")
    p.add_argument("--prompt", "-p", metavar="TEXT",
                   help="text to run (default: a fixed English sentence; a reference file brings its own ids)")
    p.add_argument("--save-reference", metavar="FILE.npz",
                   help="also write transformers' numbers to FILE.npz, for comparing later without torch")
    p.add_argument("--tolerance", type=float, default=None, metavar="NMSE",
                   help="NMSE above which a state diverges (default 1e-6)")
    p.add_argument("--attention", choices=["eager", "sdpa"], default="eager",
                   help="transformers' attention implementation (default eager)")


def add_perplexity_args(p: argparse.ArgumentParser) -> None:
    """The flags of `modelkit perplexity`."""
    add_model_args(p)
    p.add_argument("--file", "-f", required=True, metavar="TEXT", help="UTF-8 text file to score ('-': stdin)")
    p.add_argument("--ctx", "-c", type=int, default=DEFAULT_CTX, metavar="N",
                   help=f"tokens per window (default {DEFAULT_CTX})")
    p.add_argument("--method", choices=["llama.cpp", "sliding"], default="llama.cpp",
                   help="llama.cpp: chunks of --ctx, each scored on its second half (default); "
                        "sliding: transformers' strided sliding window")
    p.add_argument("--stride", type=int, default=None, metavar="N",
                   help="with --method sliding: tokens between window starts (default --ctx / 2)")
    p.add_argument("--batch", "-b", type=int, default=None, metavar="N",
                   help="tokens per forward pass within a window (default: the model's prefill chunk, 512); "
                        "changes memory, not the result")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or running value")


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare modelkit's hidden states with a reference; exit 1 when they diverge."""
    import numpy as np

    from ..evaluation import compare as cmp
    from ..evaluation import reference as refs

    tolerance = cmp.DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    if not tolerance >= 0 or math.isinf(tolerance):
        raise EvaluationError(f"--tolerance must be a finite NMSE >= 0, got {args.tolerance}")
    from_file = args.reference != "transformers"
    if from_file and args.attention != "eager":
        raise EvaluationError("--attention chooses how transformers runs; a reference file's numbers are fixed")
    if from_file and args.save_reference:
        raise EvaluationError("--save-reference writes transformers' numbers; with --reference FILE there is "
                              "nothing new to save")
    ref = refs.load_reference(args.reference) if from_file else None
    from ..loading import load

    # a reference file brings its ids, so a checkpoint without a tokenizer can be compared too
    model = load(args.model, args.arch, mapping=args.mapping, revision=args.revision, progress=True)
    if (ref is None or args.prompt is not None) and model.tokenizer is None:
        raise EvaluationError(f"{args.model}: no tokenizer.json, so the prompt cannot be encoded; compare "
                              "with a reference file (--reference FILE.npz), which holds its token ids")
    if ref is not None:
        ids = ref.ids
        if args.prompt is not None and list(model.tokenizer.encode(utf8_text(args.prompt, "--prompt"))) != \
                ids.tolist():
            raise EvaluationError(f"{ref.where}: the reference was computed on other token ids than --prompt "
                                  "gives; leave --prompt out to use the reference's own")
    else:
        text = DEFAULT_PROMPT if args.prompt is None else utf8_text(args.prompt, "--prompt")
        ids = np.asarray(model.tokenizer.encode(text), dtype=np.int64)
        if ids.size == 0:
            raise EvaluationError("the prompt encodes to no tokens; give some text")
        ref = _transformers_reference(args, model, ids)
        if args.save_reference:
            refs.save_reference(args.save_reference, ref.ids, ref.states, ref.meta)
    refs.check_fits(ref, model.vocab_size, model.config.get("hidden_size"), len(model.layers))
    got, order = cmp.observe(model, ids)
    result = cmp.compare(got, order, ref, tolerance)
    print(f"{model.name} ({model.source}) against {ref.label}: {ids.size} tokens")
    for line in cmp.report_lines(result):
        print(line)
    if not from_file:
        print("note: transformers gives hidden states per layer; blocks are compared where one module "
              "holds a block's parameters and runs once")
    if args.save_reference:
        print(f"reference written to {args.save_reference}")
    return 1 if result.first is not None else 0


def _transformers_reference(args: argparse.Namespace, model: Any, ids: Any) -> Any:
    """Run transformers on the model's folder (when it is importable) and keep its states."""
    import numpy as np

    from ..evaluation import compare as cmp
    from ..evaluation import transformers_run
    from ..evaluation.reference import Reference
    from ..loading import inspect, resolve_path

    why = transformers_run.importable()
    if why is not None:
        raise EvaluationError(f"{why}; install them, or compare with a reference file (--reference FILE.npz) "
                              "written where they are")
    folder = Path(model.source)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: transformers reads Hugging Face folders; convert the file first "
                              "(`modelkit convert`) and compare the folder")
    source, _, plan = inspect(resolve_path(args.model, args.revision), args.arch, args.mapping)
    source.close()
    layers, blocks, final = cmp.module_names(plan)
    states, meta = transformers_run.run(str(folder), ids, n_layers=len(model.layers), layer_modules=layers,
                                        block_modules=blocks, final_norm_module=final, attention=args.attention)
    return Reference(np.asarray(ids, dtype="int64"), states, meta, str(folder))


def cmd_perplexity(args: argparse.Namespace) -> int:
    """Perplexity of the model over a text file."""
    import numpy as np

    from ..evaluation.perplexity import perplexity, windows_for

    text = read_text_file(args.file, "perplexity text", MAX_TEXT_BYTES, hint="give the text with --file PATH")
    if args.batch is not None and args.batch < 1:
        raise EvaluationError(f"--batch must be at least 1, got {args.batch}")
    model, _ = load_model(args)
    ids = np.asarray(model.tokenizer.encode(text), dtype=np.int64)
    windows = windows_for(model, ids, args.method, args.ctx, args.stride)  # checks before any compute
    bar = _progress(len(windows), args.quiet)
    try:
        result = perplexity(model, ids, method=args.method, ctx=args.ctx, stride=args.stride, batch=args.batch,
                            progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    how = f"ctx {result.ctx}" + (f", stride {result.stride}" if result.stride else "")
    print(f"perplexity {result.value:.4f} +/- {result.stderr:.4f}  ({result.method} method, {how}: "
          f"{result.scored} of {result.text_tokens} tokens scored in {result.windows} windows)")
    return 0


class _Bar:
    """tqdm over the windows, showing the running perplexity; plain lines when stderr is not a
    terminal (a log), like llama.cpp's ``[i]ppl`` values."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        self.tty = sys.stderr.isatty()
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="perplexity", unit="window", file=sys.stderr, leave=False)

    def update(self, running: Any) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"ppl {running.value:.4f}", refresh=False)
            self.bar.update(1)
        else:
            print(f"[{self.done}/{self.total}] ppl {running.value:.4f}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(total: int, quiet: bool) -> _Bar | None:
    return None if quiet else _Bar(total)

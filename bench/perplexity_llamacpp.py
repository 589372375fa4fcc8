"""llama.cpp's perplexity of a GGUF file over a text, through llama-cpp-python, for comparing
with ``modelkit perplexity`` (docs/evaluation.md).

    python bench/perplexity_llamacpp.py MODEL.gguf TEXT.txt [--ctx 512] [--threads 2]

Runs in an environment with llama-cpp-python (a throwaway venv is fine; modelkit is not needed).
It reproduces llama-perplexity's default method with llama.cpp's own tokenizer and logits: the
text tokenized with the model's special tokens, cut into len // ctx chunks of ctx tokens, each
evaluated from an empty cache (its first token replaced by BOS when the vocabulary adds one), the
tokens at positions ctx/2 + 1 .. ctx - 1 scored from the logits before them, the log-softmax in
float64. Prints the token count, a digest of the ids (to check both tokenizers agree), and the
perplexity with llama.cpp's standard error.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("text")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import llama_cpp

    llm = llama_cpp.Llama(args.model, n_ctx=args.ctx, n_batch=args.ctx, n_ubatch=args.ctx, logits_all=True,
                          n_threads=args.threads, verbose=False)
    text = open(args.text, encoding="utf-8").read()
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    add_bos = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model))
    ctx, first = args.ctx, args.ctx // 2
    n_chunk = len(tokens) // ctx
    if n_chunk < 2:
        raise SystemExit(f"need at least {2 * ctx} tokens, the text has {len(tokens)}")
    nll = nll2 = 0.0
    count = 0
    for i in range(n_chunk):
        chunk = list(tokens[i * ctx:(i + 1) * ctx])
        if add_bos:
            chunk[0] = llm.token_bos()
        llm.reset()
        llm._ctx.kv_cache_clear()  # reset() alone clears only recurrent state; eval() would trim from 0 anyway
        llm.eval(chunk)
        logits = np.array(llm.scores[:ctx], dtype=np.float64)  # [ctx, vocab]
        rows = logits[first:ctx - 1]
        top = rows.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
        lp = rows[np.arange(rows.shape[0]), chunk[first + 1:ctx]] - lse
        nll -= float(lp.sum())
        nll2 += float(np.dot(lp, lp))
        count += lp.size
        print(f"[{i + 1}]{math.exp(nll / count):.4f}", end=",", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    mean, var = nll / count, nll2 / count - (nll / count) ** 2
    ppl = math.exp(mean)
    digest = hashlib.sha256(np.asarray(tokens, dtype=np.int64).tobytes()).hexdigest()[:16]
    print(f"tokens {len(tokens)} (ids sha256 {digest}), add_bos {bool(add_bos)}, {n_chunk} chunks, {count} scored")
    print(f"perplexity {ppl:.4f} +/- {ppl * math.sqrt(max(var, 0.0) / (count - 1)):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

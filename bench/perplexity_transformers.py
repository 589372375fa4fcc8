"""The sliding-window perplexity of transformers' perplexity guide, for comparing with
``modelkit perplexity --method sliding`` (docs/evaluation.md).

    python bench/perplexity_transformers.py FOLDER TEXT.txt [--ctx 512] [--stride 256]

Runs where torch and transformers are (modelkit is not needed). Windows of at most ctx tokens
start every stride tokens; each scores the tokens past the previous window's end (labels -100
before them), in float32, eager attention. Prints two figures: the guide's own (each window's
mean loss weighted by its number of labels minus one) and the exact one (every scored token's
log-probability summed in float64), which is what modelkit reports.
"""

from __future__ import annotations

import argparse
import math
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder")
    p.add_argument("text")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    tok = AutoTokenizer.from_pretrained(args.folder)
    ids = tok(open(args.text, encoding="utf-8").read(), return_tensors="pt").input_ids
    seq_len = ids.size(1)
    guide_nll, guide_n = 0.0, 0
    exact_nll, exact_n = 0.0, 0
    prev_end = 0
    for begin in range(0, seq_len, args.stride):
        end = min(begin + args.ctx, seq_len)
        trg_len = end - prev_end
        window = ids[:, begin:end]
        labels = window.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            out = model(window, labels=labels)
        valid = int((labels != -100).sum())
        guide_nll += float(out.loss) * (valid - 1)  # the guide's weighting
        guide_n += valid - 1
        logp = torch.log_softmax(out.logits[0, :-1].double(), dim=-1)  # row r predicts window[r + 1]
        targets = labels[0, 1:]
        keep = targets != -100
        exact_nll -= float(logp[keep].gather(1, targets[keep][:, None]).sum())
        exact_n += int(keep.sum())
        prev_end = end
        if end == seq_len:
            break
    print(f"tokens {seq_len}, ctx {args.ctx}, stride {args.stride}")
    print(f"guide's code: perplexity {math.exp(guide_nll / guide_n):.4f} ({guide_n} tokens as it counts them)")
    print(f"exact:        perplexity {math.exp(exact_nll / exact_n):.4f} ({exact_n} tokens scored)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

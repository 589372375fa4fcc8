"""One benchmark measurement in a fresh process: one engine, one checkpoint, one figure group.

Run by ``python -m bench`` (``bench/run.py``), once per engine and figure group, so that the
peak resident set (VmHWM) belongs to that engine and that group alone. Standalone on purpose:
the reference engines run under another interpreter (``--ref-python``) that need not have
modelkit installed. The result is one JSON object on the last line of stdout.

Every engine runs the same token loop: a prompt of token ids goes in, the logits of its last
position come out (one row, as llama.cpp computes), the next id is the argmax, and decoding
feeds one id at a time through the engine's own cache.

Figure groups:

- ``load``: load time, resident set after load, then time to first token for a 16-token
  prompt (the first call after load, and again on a warm engine);
- ``prefill``: prompts of 128, 512 and 2048 tokens, each on a fresh sequence (tokens/s);
- ``decode``: steady greedy decoding after a short prompt (tokens/s);
- ``long``: one 8192-token prefill (time and peak resident set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np


def rss_mb() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident set of this process in MiB."""
    out = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) / 1024.0
    except OSError:  # not Linux: ru_maxrss is the peak (KiB on Linux, bytes on macOS)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mb = peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
        out = {"VmRSS": float("nan"), "VmHWM": peak_mb}
    return {"rss_mb": out.get("VmRSS", float("nan")), "peak_rss_mb": out.get("VmHWM", float("nan"))}


def blas_info() -> dict[str, Any]:
    """The BLAS NumPy uses here: library, kernel (core type) and threads, when knowable."""
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                return {"blas": pool.get("internal_api"), "kernel": pool.get("architecture"),
                        "threads": pool.get("num_threads"), "version": pool.get("version")}
    except ImportError:
        pass
    return {"blas": "unknown (install threadpoolctl to see the kernel)"}


# ---- engines -------------------------------------------------------------------------------------


class Engine:
    """What the token loop needs from an engine."""

    vocab: int

    def start(self) -> None:
        """Begin a new, empty sequence."""
        raise NotImplementedError

    def feed(self, ids: np.ndarray) -> np.ndarray:
        """Run ``ids`` after the current sequence; the logits of the last one, [vocab]."""
        raise NotImplementedError

    def notes(self) -> dict[str, Any]:
        """What the engine chose while it ran, for the record."""
        return {}


class ModelkitEngine(Engine):
    def __init__(self, path: str, threads: int):
        _limit_numpy_threads(threads)
        import modelkit

        self.model = modelkit.load(path)
        self.vocab = self.model.vocab_size
        self.cache = None

    def start(self) -> None:
        self.cache = self.model.make_cache()

    def feed(self, ids: np.ndarray) -> np.ndarray:
        return self.model.forward(ids, self.cache, last_only=True)[-1]

    def notes(self) -> dict[str, Any]:
        # the head's layout trial (modelkit.nn.trial): each layout's median ms and the one kept
        trial = self.model.head_trial
        return {} if trial is None else {"head_trial": trial.report()}


class TransformersEngine(Engine):
    def __init__(self, path: str, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.model.eval()
        self.vocab = int(self.model.config.vocab_size)
        self.cache = None

    def start(self) -> None:
        self.cache = None

    def feed(self, ids: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.asarray(ids, np.int64))[None]
            kwargs = {"cache": self.cache} if self.cache is not None else {}
            out = self.model(input_ids=x, use_cache=True, logits_to_keep=1, **kwargs)
            self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
            return out.logits[0, -1].numpy()


class LlamaCppEngine(Engine):
    def __init__(self, path: str, threads: int, n_ctx: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                         logits_all=False, verbose=False)
        self.vocab = int(self.llm.n_vocab())

    def start(self) -> None:
        self.llm.reset()

    def feed(self, ids: np.ndarray) -> np.ndarray:
        import llama_cpp

        self.llm.eval([int(i) for i in ids])  # computes the logits of the last position only
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.vocab,)).copy()


def _limit_numpy_threads(threads: int) -> None:
    # the environment (set by bench/run.py) already asks for this many; threadpoolctl makes
    # sure when it is installed (measurement only, never a dependency)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass


ENGINES: dict[str, Callable[..., Engine]] = {
    "modelkit": lambda a: ModelkitEngine(a.model, a.threads),
    "transformers": lambda a: TransformersEngine(a.model, a.threads),
    "llamacpp": lambda a: LlamaCppEngine(a.model, a.threads, a.n_ctx),
}


# ---- figure groups -------------------------------------------------------------------------------


# tokens decoded untimed before the decode group's timed ones, for every engine: enough for
# modelkit's head layout trial (modelkit.nn.trial.TRIAL_PRODUCTS, checked by the tests) to end,
# so that the figure is the steady rate (this worker also runs where modelkit is not installed)
DECODE_WARM_TOKENS = 48


def prompt(n: int, vocab: int, seed: int) -> np.ndarray:
    """``n`` token ids, uniformly random over the vocabulary (fixed seed: the same for every engine)."""
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int64)


def timed_prefill(engine: Engine, ids: np.ndarray) -> tuple[float, int]:
    """Seconds to run a fresh prompt and pick the next token, and that token."""
    t0 = time.perf_counter()
    engine.start()
    token = int(np.argmax(engine.feed(ids)))
    return time.perf_counter() - t0, token


def group_load(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    engine = ENGINES[args.engine](args)
    load_s = time.perf_counter() - t0
    out: dict[str, Any] = {"load_s": load_s, **{f"load_{k}": v for k, v in rss_mb().items()}}
    ids = prompt(16, engine.vocab, args.seed)
    out["ttft_cold_ms"] = 1000.0 * timed_prefill(engine, ids)[0]
    out["ttft_ms"] = 1000.0 * min(timed_prefill(engine, ids)[0] for _ in range(3))
    return out


def group_prefill(args: argparse.Namespace) -> dict[str, Any]:
    engine = ENGINES[args.engine](args)
    timed_prefill(engine, prompt(16, engine.vocab, args.seed))  # warm up
    out: dict[str, Any] = {}
    for n in args.prefill:
        seconds, _ = timed_prefill(engine, prompt(n, engine.vocab, args.seed + n))
        out[f"prefill_{n}_tok_s"] = n / seconds
    return out


def group_decode(args: argparse.Namespace) -> dict[str, Any]:
    engine = ENGINES[args.engine](args)
    _, token = timed_prefill(engine, prompt(32, engine.vocab, args.seed))
    warm = DECODE_WARM_TOKENS
    t0 = 0.0
    for step in range(warm + args.decode):
        if step == warm:
            t0 = time.perf_counter()
        token = int(np.argmax(engine.feed(np.array([token], np.int64))))
    seconds = time.perf_counter() - t0
    return {"decode_tok_s": args.decode / seconds, "decode_ms_per_token": 1000.0 * seconds / args.decode,
            **engine.notes()}


def group_long(args: argparse.Namespace) -> dict[str, Any]:
    engine = ENGINES[args.engine](args)
    before = rss_mb()["peak_rss_mb"]
    seconds, _ = timed_prefill(engine, prompt(args.long, engine.vocab, args.seed))
    return {f"long_{args.long}_s": seconds, f"long_{args.long}_tok_s": args.long / seconds,
            "long_peak_before_mb": before}


GROUPS = {"load": group_load, "prefill": group_prefill, "decode": group_decode, "long": group_long}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one benchmark measurement (used by python -m bench)")
    parser.add_argument("--engine", required=True, choices=sorted(ENGINES))
    parser.add_argument("--model", required=True, help="checkpoint folder (or GGUF file for llamacpp)")
    parser.add_argument("--group", required=True, choices=sorted(GROUPS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefill", type=lambda s: [int(x) for x in s.split(",")], default=[128, 512, 2048])
    parser.add_argument("--decode", type=int, default=64, help="decoded tokens timed")
    parser.add_argument("--long", type=int, default=8192, help="tokens of the long prefill")
    parser.add_argument("--n-ctx", type=int, default=0, help="llama.cpp context (default: what the group needs)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    if not args.n_ctx:
        need = {"load": 64, "prefill": max(args.prefill), "decode": 128 + args.decode, "long": args.long}
        args.n_ctx = need[args.group] + 64
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result = GROUPS[args.group](args)
    result["loadavg"] = load  # the machine's load average (1 minute) when the worker started
    result.update(rss_mb())
    result.update({"engine": args.engine, "group": args.group, "threads": args.threads})
    if args.engine == "modelkit":
        from modelkit.nn import layout

        result.update(blas_info())
        # what modelkit.nn.layout measured per shape class: the layout ("C" [out, in], "F"
        # [in, out]) and whether few-row products with [out, in] weights are turned
        result["layout"] = {str(t): {kind: choice._asdict() for kind, choice in chosen.items()}
                            for t, chosen in layout.measured().items()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

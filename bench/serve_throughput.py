"""Throughput of `modelkit serve` under 1, 4, 8 and 16 concurrent streams.

    python3 bench/serve_throughput.py --model ~/.cache/modelkit/bench/checkpoints/smollm2-135m-real

Starts the server on 127.0.0.1 (a free port) with ``--max-batch`` the largest concurrency, then
for each concurrency runs that many clients at once, each streaming ``--requests`` completions
of ``--max-tokens`` tokens one after another (greedy, different prompts), and reports the
aggregate generated tokens per second (all clients' tokens over the wall time, prefill
included), its ratio to one stream, the aggregate decode rate (each request's tokens after its
first over the time after its first token, the median over requests, times the number of
streams: what the batched decoding steps give, without the prompts), its ratio to one stream,
and the time to first token (median and worst). Only the standard library is used on the client
side. ``--json FILE`` writes the figures.

``--port N --name NAME`` measures a server that is already running on 127.0.0.1:N instead (any
OpenAI-compatible one: llama.cpp's ``llama-server -np 16 --port N`` gives the comparison with
the same number of parallel slots).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or as bench.*
from bench.served import modelkit_server  # noqa: E402

# one-stream tokens of the warm-up request: enough for modelkit's head layout trial
# (modelkit.nn.trial.TRIAL_PRODUCTS, checked by the tests) to end before anything is measured
WARM_TOKENS = 50

PROMPTS = ["Once upon a time, in a small village by the sea, there lived",
           "The history of the printing press begins",
           "Here is a short explanation of how rainbows form:",
           "My favourite recipe for a weekday dinner is",
           "The three most important ideas in computer science are",
           "In the year 2050, cities will",
           "A letter to my younger self: Dear",
           "The rules of chess are simple. First,"]


def stream_once(port: int, prompt: str, max_tokens: int, name: str = "bench") -> tuple[float, float, int]:
    """(seconds to the first token, seconds in all, tokens) for one streamed completion."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"model": name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    first, tokens, pieces = None, None, 0
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif chunk["choices"] and chunk["choices"][0]["text"]:
            pieces += 1
            if first is None:
                first = time.perf_counter() - t0
    conn.close()
    total = time.perf_counter() - t0
    # a server that ignores stream_options.include_usage (llama-cpp-python's) streams one token
    # per chunk: count the chunks
    return (first if first is not None else total), total, tokens if tokens is not None else pieces


def measure(port: int, streams: int, requests: int, max_tokens: int, name: str = "bench") -> dict:
    """``streams`` clients at once, ``requests`` completions each."""
    results: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for r in range(requests):
            out = stream_once(port, PROMPTS[(i + r) % len(PROMPTS)] + f" (#{i}.{r})", max_tokens, name)
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(r[2] for r in results)
    ttft = sorted(r[0] for r in results)
    # per request: tokens after the first over the time after the first (1 / time per output token)
    decode = statistics.median((n - 1) / (total - first) for first, total, n in results if n > 1 and total > first)
    return {"streams": streams, "requests": len(results), "tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 2), "decode_tokens_per_s": round(streams * decode, 2),
            "ttft_median_s": round(statistics.median(ttft), 3), "ttft_max_s": round(ttft[-1], 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder or file for `modelkit serve`")
    p.add_argument("--port", type=int, help="measure the server already listening on 127.0.0.1:PORT instead")
    p.add_argument("--name", default="bench", help="the model name to send with --port (default bench)")
    p.add_argument("--streams", default="1,4,8,16", help="concurrencies to measure (default 1,4,8,16)")
    p.add_argument("--requests", type=int, default=2, help="completions per client (default 2)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per completion (default 32)")
    p.add_argument("--server-arg", action="append", default=[], help="extra flag for `modelkit serve`")
    p.add_argument("--json", type=Path, help="write the figures to this file")
    args = p.parse_args(argv)
    streams = [int(s) for s in args.streams.split(",")]
    if args.port is not None:
        return report(args, args.port, args.name, streams)
    if not args.model:
        p.error("give --model (or --port of a running server)")
    flags = ["--model", args.model, "--served-model-name", "bench", "--max-batch", str(max(streams)),
             "--queue-size", str(4 * max(streams)), "--prefix-cache-bytes", "0", *args.server_arg]
    with modelkit_server(flags) as port:
        return report(args, port, "bench", streams)


def report(args: argparse.Namespace, port: int, name: str, streams: list[int]) -> int:
    """Measure each concurrency, print a line per row, write --json."""
    stream_once(port, "warm up", WARM_TOKENS, name)
    rows = []
    for n in streams:
        row = measure(port, n, args.requests, args.max_tokens, name)
        rows.append(row)
        base, base_decode = rows[0]["tokens_per_s"], rows[0]["decode_tokens_per_s"]
        print(f"{n:>3} streams: {row['tokens_per_s']:8.2f} tok/s ({row['tokens_per_s'] / base:4.2f}x)  decode "
              f"{row['decode_tokens_per_s']:8.2f} tok/s ({row['decode_tokens_per_s'] / base_decode:4.2f}x)  TTFT median {row['ttft_median_s']:.2f} s, worst {row['ttft_max_s']:.2f} s  "
              f"[{row['tokens']} tokens, {row['requests']} requests, {row['wall_s']} s]", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model or f"127.0.0.1:{port}", "max_tokens": args.max_tokens,
                                         "server_args": args.server_arg, "rows": rows}, indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main())

"""Prompts that arrive together are read together: the scheduler admits every waiting choice of a
turn in one batched prefill, and each still gets the greedy text it gets alone. On Granite
4.0-H's shape (Mamba2 and attention layers), in process and through a live server."""

from __future__ import annotations

import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import load_cached
from servers import NAME, Server, hybrid_folder, local_model  # noqa: F401

from modelkit.serve.prefix_cache import PrefixCache
from modelkit.serve.scheduler import Choice, Scheduler

PROMPTS = ["the first prompt", "a second, longer prompt than the first", "third", "and a fourth one here"]


@pytest.fixture(scope="module")
def hybrid_server(hybrid_folder):
    s = Server(hybrid_folder, "--prefix-cache-bytes", "0")
    yield s
    assert s.stop() == 0


def greedy(model, prompt: str, n: int) -> str:
    return "".join(p.text for p in model.stream(model.tokenizer.encode(prompt), max_new_tokens=n, temperature=0.0))


def metrics(server: Server) -> dict[str, float]:
    with urllib.request.urlopen(server.root + "/metrics", timeout=10) as r:
        lines = r.read().decode().split("\n")
    return {k: float(v) for k, v in (line.split() for line in lines if line)}


def test_requests_waiting_together_are_read_in_one_prefill() -> None:
    """Four requests queued before the scheduler's turn (one with a cached prefix): one
    prefill reads them all, and each gets the tokens of generate alone."""
    model = load_cached("gh_hybrid")
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17], [1, 2, 3, 4, 5, 6, 2]]
    lengths = [5, 3, 6, 4]
    prefix = PrefixCache(1 << 24)
    scheduler = Scheduler(model, max_batch=4, prefix_cache=prefix)
    got: list[list[int]] = [[] for _ in prompts]
    ended = threading.Event()
    ends: list[str] = []

    def sink(i: int):
        def take(item: tuple) -> None:
            if item[0] == "token":
                got[i].append(item[2])
            elif item[0] in ("end", "error"):
                ends.append(item[1])
                if len(ends) == len(prompts):
                    ended.set()
        return take

    cache = model.make_cache()
    model.forward(prompts[0], cache)
    prefix.store(cache)  # the fourth prompt continues the first's ids
    for i, (p, n) in enumerate(zip(prompts, lengths)):  # separate requests, all waiting
        scheduler.submit([Choice(p, {"max_new_tokens": n, "temperature": 0.0}, sink(i))])
    scheduler.start()
    assert ended.wait(60)
    scheduler.stop(5)
    assert ends == ["length"] * 4
    assert got == [model.generate(p, n, temperature=0.0) for p, n in zip(prompts, lengths)]
    stats = scheduler.stats()
    assert stats["prefills"] == 1 and stats["largest_prefill"] == 4
    assert stats["prefix_cache"]["hits"] == 1 and stats["prefilled_tokens"] == sum(map(len, prompts)) - 5


def test_choices_of_a_request_share_one_prefill(hybrid_server, hybrid_folder) -> None:
    model = local_model(hybrid_folder)
    before = metrics(hybrid_server)
    out = hybrid_server.client().completions.create(model=NAME, prompt=PROMPTS, max_tokens=6, temperature=0)
    after = metrics(hybrid_server)
    assert [c.text for c in sorted(out.choices, key=lambda c: c.index)] == [greedy(model, p, 6) for p in PROMPTS]
    assert after["modelkit_prefills"] - before["modelkit_prefills"] == 1
    assert after["modelkit_largest_prefill"] >= len(PROMPTS)


def test_concurrent_clients_get_their_greedy_text(hybrid_server, hybrid_folder) -> None:
    """Eight clients at once: however their prompts are grouped into prefills, each answer is
    the one it gets alone."""
    model = local_model(hybrid_folder)
    prompts = [f"{PROMPTS[i % 4]} #{i}" for i in range(8)]
    want = [greedy(model, p, 5) for p in prompts]
    start = threading.Barrier(len(prompts))

    def ask(i: int) -> str:
        body = json.dumps({"model": NAME, "prompt": prompts[i], "max_tokens": 5, "temperature": 0}).encode()
        req = urllib.request.Request(hybrid_server.url + "/completions", body, {"Content-Type": "application/json"})
        start.wait()
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["choices"][0]["text"]

    with ThreadPoolExecutor(len(prompts)) as pool:
        assert list(pool.map(ask, range(len(prompts)))) == want
    stats = hybrid_server.health()
    assert stats["running"] == 0 and stats["largest_prefill"] >= 1

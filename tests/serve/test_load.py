"""Under load: 16 concurrent clients each get a complete, correct answer; a client that goes away
mid-stream frees its place; SIGTERM finishes what is running and exits 0."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from servers import NAME, Server, client, llama_folder, local_model, server  # noqa: F401

CLIENTS = 16
SECONDS = 3.0  # each client sends requests for this long


def greedy(folder, prompt: str, n: int) -> str:
    model = local_model(folder)
    return "".join(p.text for p in model.stream(model.tokenizer.encode(prompt), max_new_tokens=n, temperature=0.0))


def test_sixteen_concurrent_clients(server, llama_folder) -> None:
    prompts = [f"client {i} says" for i in range(CLIENTS)]
    want = {p: greedy(llama_folder, p, 8 + i % 5) for i, p in enumerate(prompts)}
    stop_at = time.monotonic() + SECONDS

    def one_client(i: int) -> int:
        c = server.client()
        prompt, n, done = prompts[i], 8 + i % 5, 0
        while time.monotonic() < stop_at or done == 0:
            if i % 2:  # half stream, half ask for the whole answer
                chunks = list(c.completions.create(model=NAME, prompt=prompt, max_tokens=n, temperature=0,
                                                   stream=True))
                text = "".join(ch.choices[0].text for ch in chunks)
                assert chunks[-1].choices[0].finish_reason in ("length", "stop")
            else:
                out = c.completions.create(model=NAME, prompt=prompt, max_tokens=n, temperature=0)
                text = out.choices[0].text
                assert out.choices[0].finish_reason in ("length", "stop")
            assert text == want[prompt], (i, text, want[prompt])
            done += 1
        return done

    with ThreadPoolExecutor(CLIENTS) as pool:
        counts = list(pool.map(one_client, range(CLIENTS)))
    assert all(n >= 1 for n in counts)
    health = server.health()
    assert health["running"] == 0 and health["waiting"] == 0


def _open_stream(server: Server, max_tokens: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = json.dumps({"model": NAME, "prompt": "go", "max_tokens": max_tokens, "temperature": 0, "stream": True})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.read(6) == b"data: "  # the first chunk arrived
    return conn


def test_a_disconnecting_stream_frees_its_place(server) -> None:
    conn = _open_stream(server, 1000)
    assert server.health()["running"] == 1
    conn.sock.shutdown(2)
    conn.close()
    deadline = time.monotonic() + 10
    while server.health()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.health()["running"] == 0
    assert server.health()["generated_tokens"] < 10_000  # it did not decode the 1000 tokens to the end


def test_sigterm_finishes_running_requests_and_exits_0(llama_folder) -> None:
    s = Server(llama_folder)
    results: list = []
    streaming = threading.Event()

    def ask() -> None:
        try:
            chunks = []
            for chunk in s.client().completions.create(model=NAME, prompt="finish me", max_tokens=400,
                                                       temperature=0, stream=True):
                chunks.append(chunk)
                streaming.set()
            results.append(chunks[-1].choices[0].finish_reason)
        finally:
            streaming.set()

    t = threading.Thread(target=ask)
    t.start()
    # the signal lands while the answer streams (a poll of /health could miss a short request)
    assert streaming.wait(60)
    s.proc.send_signal(signal.SIGTERM)
    t.join(60)
    assert results in (["length"], ["stop"])
    # one signal: Server.stop() would send a second one to a server still shutting down, and a
    # repeated SIGTERM is the user insisting (the default action, exit -15)
    try:
        assert s.proc.wait(30) == 0
    finally:
        s.stop()

"""Bad input and overload get OpenAI-shaped JSON errors (400/404/405/429), never a traceback,
and the server keeps serving."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
from servers import NAME, CONTEXT, Server, client, llama_folder, server  # noqa: F401


def post(server: Server, path: str, body: bytes | dict, method: str = "POST") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def assert_error(status: int, body: dict, want_status: int, *words: str) -> None:
    assert status == want_status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in err["message"]
    for word in words:
        assert word in err["message"], err["message"]


@pytest.mark.parametrize("body, words", [
    (b"{not json", ["not valid JSON"]),
    (b"[1, 2]", ["JSON object"]),
    (b"\xff\xfe", ["not valid JSON"]),
])
def test_malformed_json(server, body, words) -> None:
    assert_error(*post(server, "/completions", body), 400, *words)


@pytest.mark.parametrize("path, body, param", [
    ("/completions", {"model": NAME, "prompt": "a", "bogus": 1}, "bogus"),
    ("/completions", {"model": NAME, "prompt": "a", "max_tokens": -1}, "max_tokens"),
    ("/completions", {"model": NAME, "prompt": "a", "max_tokens": 10**9}, "max_tokens"),
    ("/completions", {"model": NAME, "prompt": "a", "max_tokens": "ten"}, "max_tokens"),
    ("/completions", {"model": NAME, "prompt": "a", "n": 1000}, "n"),
    ("/completions", {"model": NAME, "prompt": "a", "temperature": -1}, "temperature"),
    ("/completions", {"model": NAME, "prompt": "a", "top_p": 2}, "top_p"),
    ("/completions", {"model": NAME, "prompt": "a", "logprobs": 100}, "logprobs"),
    ("/completions", {"model": NAME, "prompt": "a", "presence_penalty": 0.5}, "presence_penalty"),
    ("/completions", {"model": NAME, "prompt": [1, -2]}, "prompt"),
    ("/completions", {"model": NAME, "prompt": {"x": 1}}, "prompt"),
    ("/completions", {"prompt": "a"}, "model"),
    ("/chat/completions", {"model": NAME, "messages": []}, "messages"),
    ("/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ("/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": "a"}], "max_tokens": 0},
     "max_tokens"),
    ("/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": "a"}], "tools": [{"x": 1}]},
     "tools"),
])
def test_bad_fields(server, path, body, param) -> None:
    status, answer = post(server, path, body)
    assert_error(status, answer, 400)
    assert answer["error"]["param"] == param


def test_prompt_longer_than_the_context(server) -> None:
    status, body = post(server, "/completions", {"model": NAME, "prompt": [5] * (CONTEXT + 3)})
    assert_error(status, body, 400, f"{CONTEXT + 3} tokens", f"context is {CONTEXT}")
    assert body["error"]["code"] == "context_length_exceeded"


def test_unknown_model_endpoint_and_method(server, client) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=1)
    assert info.value.body["code"] == "model_not_found"
    assert_error(*post(server, "/nowhere", {}), 404, "no such endpoint")
    assert_error(*post(server, "/models", b"", method="DELETE"), 405)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_the_server_keeps_serving(client) -> None:
    out = client.completions.create(model=NAME, prompt="still there", max_tokens=2, temperature=0)
    assert out.choices[0].finish_reason in ("length", "stop")


def test_a_full_queue_answers_429(llama_folder) -> None:
    busy = Server(llama_folder, "--max-batch", "1", "--queue-size", "1", "--max-tokens", "100000")
    try:
        c = busy.client()
        started, release = threading.Event(), threading.Event()

        def long_stream() -> None:  # holds the one batch place until released
            stream = c.completions.create(model=NAME, prompt="a", max_tokens=900, temperature=0, stream=True)
            for _ in stream:
                started.set()
                if release.is_set():
                    break
            stream.close()  # the server cancels it at its next step

        holder = threading.Thread(target=long_stream)
        holder.start()
        assert started.wait(30)
        queued = threading.Thread(target=lambda: c.completions.create(model=NAME, prompt="b", max_tokens=1))
        queued.start()  # takes the one waiting place
        deadline = time.monotonic() + 10
        while busy.health()["waiting"] != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as info:
            c.completions.create(model=NAME, prompt="c", max_tokens=1)
        assert info.value.body["code"] == "queue_full"
        with pytest.raises(openai.RateLimitError):  # n choices queue all or none
            c.completions.create(model=NAME, prompt="c", max_tokens=1, n=2)
        release.set()
        holder.join(30)
        queued.join(30)
        assert busy.health()["running"] == 0
    finally:
        assert busy.stop() == 0

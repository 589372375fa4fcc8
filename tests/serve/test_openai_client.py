"""The official openai client against a live `modelkit serve`: completions and chat, plain and
streamed, stop strings, seeded sampling, logprobs, echo, n > 1, and `modelkit run`'s text."""

from __future__ import annotations

import math

import numpy as np
import pytest
from servers import NAME, client, llama_folder, local_model, server  # noqa: F401

from modelkit.cli import main as cli_main
from modelkit.text.chat_template import chat_prompt_ids

PROMPT = "Hello world, this is"


def expected(folder, ids, **options) -> str:
    model = local_model(folder)
    return "".join(p.text for p in model.stream(ids, temperature=0.0, **options))


def test_models_list(client) -> None:
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME


def test_completion_is_the_librarys_greedy_text(client, llama_folder) -> None:
    out = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=12, temperature=0)
    model = local_model(llama_folder)
    ids = model.tokenizer.encode(PROMPT)
    assert out.choices[0].text == expected(llama_folder, ids, max_new_tokens=12)
    assert out.choices[0].finish_reason in ("length", "stop")
    assert out.usage.prompt_tokens == len(ids)
    assert out.usage.completion_tokens == len(model.generate(ids, 12, temperature=0.0))
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_same_greedy_text_as_modelkit_run(client, llama_folder, capsys) -> None:
    assert cli_main(["run", "--model", str(llama_folder), "--prompt", PROMPT, "-n", "10", "-t", "0", "-q"]) == 0
    run_text = capsys.readouterr().out.removesuffix("\n")
    out = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=10, temperature=0)
    assert out.choices[0].text == run_text
    assert cli_main(["run", "--model", str(llama_folder), "--prompt", "hi", "--chat", "-n", "6", "-t", "0",
                     "-q"]) == 0
    chat_text = capsys.readouterr().out.removesuffix("\n")
    reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=6, temperature=0)
    assert reply.choices[0].message.content == chat_text


def test_streamed_completion_with_usage(client, llama_folder) -> None:
    whole = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model=NAME, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_plain_and_streamed(client, llama_folder) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something"}]
    model = local_model(llama_folder)
    ids = chat_prompt_ids(model.tokenizer, messages)
    reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected(llama_folder, ids, max_new_tokens=8)
    assert reply.usage.prompt_tokens == len(ids)
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_stop_strings(client, llama_folder) -> None:
    full = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=16, temperature=0).choices[0].text
    stop = full[5:7]
    assert stop and stop in full
    cut = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop, "zzz"])
    assert cut.choices[0].text == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=16, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[:full.index(stop)]


def test_seeded_sampling_is_reproducible(client, llama_folder) -> None:
    args = dict(model=NAME, prompt=PROMPT, max_tokens=12, temperature=1.0, top_p=0.9, seed=1234)
    a = client.completions.create(**args).choices[0].text
    assert client.completions.create(**args).choices[0].text == a
    model = local_model(llama_folder)
    ids = model.tokenizer.encode(PROMPT)
    lib = "".join(p.text for p in model.stream(ids, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=1234))
    assert a == lib
    others = {client.completions.create(**dict(args, seed=s)).choices[0].text for s in range(4)}
    assert len(others) > 1


def log_softmax(row: np.ndarray) -> np.ndarray:
    z = row.astype(np.float64)
    return z - (z.max() + np.log(np.exp(z - z.max()).sum()))


def test_completion_logprobs(client, llama_folder) -> None:
    out = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    model = local_model(llama_folder)
    ids = model.tokenizer.encode(PROMPT)
    new = model.generate(ids, 5, temperature=0.0)
    logits = model.forward(ids + new)[len(ids) - 1:-1]  # the rows that chose each new token
    for k, token in enumerate(new):
        ref = log_softmax(logits[k])
        assert math.isclose(lp.token_logprobs[k], ref[token], abs_tol=1e-4)
        assert len(lp.top_logprobs[k]) <= 3
        assert math.isclose(max(lp.top_logprobs[k].values()), ref.max(), abs_tol=1e-4)
    assert len(lp.tokens) == len(lp.text_offset) == len(new)


def test_chat_logprobs(client) -> None:
    reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                           temperature=0, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert math.isclose(entry.logprob, entry.top_logprobs[0].logprob, abs_tol=1e-6)  # greedy: the best


def test_streamed_chat_logprobs_and_n(client) -> None:
    args = dict(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0,
                logprobs=True, top_logprobs=1)
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(stream=True, n=2, **args))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        entries = [e for ch in mine if ch.logprobs for e in ch.logprobs.content]
        # a batch of two may round differently from a batch of one (float32), never more
        assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in whole.choices[0].logprobs.content],
                                                             abs=1e-5)
        assert "".join(ch.delta.content or "" for ch in mine) == whole.choices[0].message.content
        assert mine[-1].finish_reason == whole.choices[0].finish_reason


def test_echo_prompt_logprobs(client, llama_folder) -> None:
    model = local_model(llama_folder)
    ids = model.tokenizer.encode(PROMPT)
    out = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    lp = out.choices[0].logprobs
    assert out.choices[0].text == model.tokenizer.decode(ids)
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids)
    logits = model.forward(ids)
    for j in range(1, len(ids)):
        ref = log_softmax(logits[j - 1])
        assert math.isclose(lp.token_logprobs[j], ref[ids[j]], abs_tol=1e-4)
        assert math.isclose(max(lp.top_logprobs[j].values()), ref.max(), abs_tol=1e-4)
    assert out.usage.completion_tokens == 0
    # echo with one new token, as evaluation harnesses ask; token-id prompts too
    more = client.completions.create(model=NAME, prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0)
    assert more.choices[0].logprobs.token_logprobs[:len(ids)] == lp.token_logprobs
    assert len(more.choices[0].logprobs.tokens) == len(ids) + 1


def test_n_choices_and_prompt_lists(client, llama_folder) -> None:
    out = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=7, n=3)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({c.text for c in out.choices}) > 1
    greedy = client.completions.create(model=NAME, prompt=[PROMPT, "Another"], max_tokens=6, temperature=0, n=2)
    assert [c.index for c in greedy.choices] == [0, 1, 2, 3]
    assert greedy.choices[0].text == greedy.choices[1].text
    model = local_model(llama_folder)
    assert greedy.choices[2].text == expected(llama_folder, model.tokenizer.encode("Another"), max_new_tokens=6)
    assert greedy.usage.prompt_tokens == len(model.tokenizer.encode(PROMPT)) + len(model.tokenizer.encode("Another"))


def test_tokenizer_health_and_metrics_endpoints(server, llama_folder) -> None:
    import json
    import urllib.request

    def call(path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(server.root + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return json.loads(raw) if r.headers["content-type"].startswith("application/json") else raw.decode()

    model = local_model(llama_folder)
    tokens = call("/tokenize", {"prompt": PROMPT, "add_special_tokens": False})
    assert tokens["tokens"] == model.tokenizer.encode(PROMPT, add_special_tokens=False)
    assert call("/detokenize", {"tokens": tokens["tokens"]})["prompt"] == PROMPT
    assert call("/tokenizer_info")["eos_token"] == "<|endoftext|>"
    health = call("/health")
    assert health["status"] == "ok" and health["model"] == NAME and "hits" in health["prefix_cache"]
    metrics = call("/metrics")
    assert "modelkit_generated_tokens " in metrics and "modelkit_prefix_cache_hits " in metrics

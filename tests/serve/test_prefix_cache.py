"""Prefix caching on Granite 4.0-H's shape (Mamba2 and attention layers): a chat that extends an
earlier conversation prefills only the new tokens, and answers as an uncached session does."""

from __future__ import annotations

import pytest
from servers import NAME, Server, hybrid_folder, local_model  # noqa: F401

from modelkit.generation.chat import ChatSession
from modelkit.generation.loop import GenerationStats


@pytest.fixture(scope="module")
def hybrid_server(hybrid_folder):
    s = Server(hybrid_folder)
    yield s
    assert s.stop() == 0


def test_a_continued_chat_prefills_only_the_new_tokens(hybrid_server, hybrid_folder) -> None:
    model = local_model(hybrid_folder)
    kinds = {kind for layer in model.layers for kind in layer.kinds.values()}
    assert {"mamba2", "attention"} <= kinds
    session = ChatSession(model, max_new_tokens=6, temperature=0.0)
    first = "".join(p.text for p in session.send("Hello there"))
    stats = GenerationStats()
    second = "".join(p.text for p in session.send("And then?", stats=stats))
    assert stats.cached_tokens > 0  # the session reused its cache: the server must too

    c = hybrid_server.client()
    messages = [{"role": "user", "content": "Hello there"}]
    reply = c.chat.completions.create(model=NAME, messages=messages, max_tokens=6, temperature=0)
    assert reply.choices[0].message.content == first
    before = hybrid_server.health()
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
    reply2 = c.chat.completions.create(model=NAME, messages=messages, max_tokens=6, temperature=0)
    after = hybrid_server.health()
    assert reply2.choices[0].message.content == second
    assert reply2.usage.prompt_tokens_details.cached_tokens == stats.cached_tokens
    assert after["prefilled_tokens"] - before["prefilled_tokens"] == stats.prompt_tokens
    # everything before the new turn came from the snapshot at the end of the first reply (its
    # last token, the EOS, is the one token of the reply the cache had not read)
    assert stats.cached_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens - 1
    assert stats.prompt_tokens == reply2.usage.prompt_tokens - stats.cached_tokens
    cache = after["prefix_cache"]
    assert cache["hits"] - before["prefix_cache"]["hits"] == 1 and cache["bytes"] > 0


def test_completions_reuse_a_token_prefix(hybrid_server, hybrid_folder) -> None:
    c = hybrid_server.client()
    model = local_model(hybrid_folder)
    ids = model.tokenizer.encode("The same long opening, then one ending")
    cold = c.completions.create(model=NAME, prompt=ids, max_tokens=5, temperature=0)
    warm = c.completions.create(model=NAME, prompt=ids + ids[:3], max_tokens=5, temperature=0)
    assert warm.usage.prompt_tokens_details.cached_tokens == len(ids)
    assert warm.choices[0].text == "".join(
        p.text for p in model.stream(ids + ids[:3], max_new_tokens=5, temperature=0.0))
    assert cold.usage.prompt_tokens_details.cached_tokens == 0


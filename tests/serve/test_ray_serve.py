"""The Ray Serve wrapper on a local Ray instance (127.0.0.1 only): two replicas of the server app
answer through Ray's proxy with the library's greedy text. Ray is no dependency of modelkit:
this runs where ``ray[serve]`` is installed (docs/serving.md), and is slow (Ray takes tens of
seconds to start)."""

from __future__ import annotations

import os

import pytest
from servers import NAME, free_port, llama_folder, local_model  # noqa: F401

pytestmark = pytest.mark.slow


def test_two_replicas_on_local_ray(llama_folder) -> None:
    ray = pytest.importorskip("ray")
    from ray import serve

    from modelkit.serve.ray_serve import deployment

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment(str(llama_folder), num_replicas=2, num_cpus=0.5, served_model_name=NAME,
                             max_batch=4), route_prefix="/")
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        model = local_model(llama_folder)
        for prompt in ("Hello world", "Another prompt", "A third one"):
            want = "".join(p.text for p in model.stream(model.tokenizer.encode(prompt), max_new_tokens=6,
                                                        temperature=0.0))
            out = client.completions.create(model=NAME, prompt=prompt, max_tokens=6, temperature=0)
            assert out.choices[0].text == want
            chunks = list(client.completions.create(model=NAME, prompt=prompt, max_tokens=6, temperature=0,
                                                    stream=True))
            assert "".join(c.choices[0].text for c in chunks) == want
    finally:
        serve.shutdown()
        ray.shutdown()

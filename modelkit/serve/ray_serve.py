"""Ray Serve deployments of the same app, for users who outgrow one process (optional: needs
``ray[serve]``, which modelkit does not depend on).

    from ray import serve
    from modelkit.serve.ray_serve import deployment

    serve.run(deployment("HuggingFaceTB/SmolLM2-135M-Instruct", num_replicas=4, max_batch=8))

or from the command line, ``serve run modelkit.serve.ray_serve:app_builder model=PATH``. Each
replica loads the model and runs the app `modelkit serve` runs (its scheduler, queue and prefix
cache are the replica's own); Ray's proxy spreads requests over the replicas.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ModelkitError


def _flags(model: str, flags: dict[str, Any]) -> list[str]:
    """`modelkit serve` arguments for ``model`` and keyword flags (``max_batch=8`` -> ``--max-batch 8``)."""
    out = ["--model", model]
    for key, value in flags.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def asgi_builder(model: str, **flags: Any) -> Callable[[], Any]:
    """A function that loads ``model`` and returns the server's ASGI app, as Ray Serve calls it
    on each replica; ``flags`` are those of `modelkit serve` (``max_batch``, ``queue_size``,
    ``prefix_cache_bytes``, ...; ``host`` and ``port`` are Ray's to choose)."""
    import argparse

    from .command import configure

    parser = argparse.ArgumentParser(prog="modelkit serve", exit_on_error=False)
    configure(parser)
    try:
        args = parser.parse_args(_flags(model, flags))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ModelkitError(f"Ray Serve deployment of {model}: bad flags {flags}: {exc}") from None

    def build() -> Any:
        from ..cli.common import load_model
        from .app import build_app
        from .command import build_state

        loaded, _ = load_model(args)
        return build_app(build_state(loaded, args))

    return build


def deployment(model: str, *, num_replicas: int = 1, num_cpus: float = 1.0, name: str = "modelkit",
               **flags: Any) -> Any:
    """A bound Ray Serve application: ``num_replicas`` replicas of the server app, each with
    ``num_cpus`` CPUs reserved; pass it to ``ray.serve.run``."""
    try:
        from ray import serve
    except ImportError:
        raise ModelkitError("modelkit.serve.ray_serve needs Ray Serve: pip install 'ray[serve]'") from None
    ingress = serve.ingress(asgi_builder(model, **flags))
    cls = serve.deployment(ingress(type("ModelkitServer", (), {})), name=name, num_replicas=num_replicas,
                           ray_actor_options={"num_cpus": num_cpus})
    return cls.bind()


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run modelkit.serve.ray_serve:app_builder model=PATH [num_replicas=N] [max_batch=N] ...``."""
    args = dict(args)
    model = args.pop("model", None)
    if not model:
        raise ModelkitError("give the model: serve run modelkit.serve.ray_serve:app_builder model=PATH")
    replicas = int(args.pop("num_replicas", 1))
    cpus = float(args.pop("num_cpus", 1.0))
    return deployment(model, num_replicas=replicas, num_cpus=cpus, **args)

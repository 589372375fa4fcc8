"""Live `modelkit serve` processes for the server tests: each on 127.0.0.1 and a free port,
over a copy of a tiny fixture with a chat template and a longer context. Test modules import
the fixtures they use from here (one server process per configuration and session)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from chat_models import chat_model_folder
from conftest import ROOT, cli_env

NAME = "tiny"
CONTEXT = 1024  # the fixtures' 64 positions are too few for a chat template; rotary/none positions have no table


def serve_folder(tmp: Path, fixture: str) -> Path:
    """A fixture copy with a chat template and max_position_embeddings raised to CONTEXT."""
    folder = chat_model_folder(tmp, name=fixture)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = CONTEXT
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m modelkit serve` in a subprocess; ``url`` is its /v1 base."""

    def __init__(self, folder: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.root = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelkit", "serve", "--model", str(folder), "--served-model-name", NAME,
             "--port", str(self.port), *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"modelkit serve exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("modelkit serve did not come up in 60 s")

    def health(self) -> dict:
        with urllib.request.urlopen(self.root + "/health", timeout=5) as r:
            return json.loads(r.read())

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.url, api_key="unused", max_retries=0, timeout=60, **kw)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, and the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode


_shared: dict[tuple[str, ...], object] = {}


def _once(request: pytest.FixtureRequest, key: tuple[str, ...], make, stop=None):
    """One object per key for the whole test session, whichever module asks first (fixtures
    imported into several modules are separate fixtures, so they share through this)."""
    if key not in _shared:
        _shared[key] = make()
        if stop is not None:
            request.config.add_cleanup(lambda: stop(_shared.pop(key)))
    return _shared[key]


@pytest.fixture(scope="session")
def llama_folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _once(request, ("folder", "llama_gqa"),
                 lambda: serve_folder(tmp_path_factory.mktemp("serve"), "llama_gqa"))


@pytest.fixture(scope="session")
def hybrid_folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _once(request, ("folder", "gh_hybrid"),
                 lambda: serve_folder(tmp_path_factory.mktemp("serve"), "gh_hybrid"))


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest, llama_folder: Path) -> Server:
    """The llama server most tests share (started once per session, stopped at its end)."""
    return _once(request, ("server", str(llama_folder)), lambda: Server(llama_folder), Server.stop)


@pytest.fixture(scope="session")
def client(server: Server):
    return server.client()

_models: dict[Path, object] = {}


def local_model(folder: Path):
    """The served folder loaded in the test process, for expected results (loaded once)."""
    if folder not in _models:
        import modelkit

        _models[folder] = modelkit.load(folder)
    return _models[folder]

"""--model as a hub repo id, and `modelkit download`, without the network.

Resolution runs against a Hugging Face cache laid out in a temp folder (HF_HUB_CACHE); downloads
run the real huggingface_hub code path against a stand-in hub served on 127.0.0.1 by a small
threaded http.server that answers the routes snapshot_download calls: the revision API, the
tree API and the file resolve URLs (HEAD and GET, with ETag, X-Repo-Commit and Content-Length).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from conftest import FIXTURES, ROOT, cli_env

import modelkit
from modelkit.errors import CheckpointError
from modelkit.checkpoint.hub import ALLOW_PATTERNS, looks_like_repo_id, resolve_model_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODEL_FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"]
# a stand-in hub stops serving after this many seconds whatever happens
SERVER_LIFETIME_S = 120


def make_cache(root: Path, repo_id: str = "org/tiny", revision: str = COMMIT, ref: str = "main",
               fixture: str = "llama_gqa") -> Path:
    """A Hugging Face cache in ``root``: models--org--name/snapshots/<rev>/ + refs/<ref>."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy2(FIXTURES / fixture / name, snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / ref).write_text(revision)
    return snap


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty HF cache in tmp, used by huggingface_hub in this process (offline)."""
    from huggingface_hub import constants

    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return root


# ---- resolution from the local cache -----------------------------------------------------
def test_repo_id_resolves_from_the_cache_offline(hf_cache):
    snap = make_cache(hf_cache)
    assert resolve_model_path("org/tiny") == snap
    assert resolve_model_path("org/tiny", revision=COMMIT) == snap
    model = modelkit.load(resolve_model_path("org/tiny"))
    assert model.generate([1, 2, 3], 4) == modelkit.load(FIXTURES / "llama_gqa").generate([1, 2, 3], 4)


def test_branch_revision_resolves_through_refs(hf_cache):
    other = "f" * 40
    snap = make_cache(hf_cache, revision=other, ref="dev")
    assert resolve_model_path("org/tiny", revision="dev") == snap


def test_uncached_repo_offline_is_a_clear_error(hf_cache):
    with pytest.raises(CheckpointError, match="org/absent.*not in the local cache"):
        resolve_model_path("org/absent")


def test_local_paths_win_and_non_ids_are_path_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "tiny").mkdir()
    assert not looks_like_repo_id("org/tiny")  # an existing folder is a folder
    assert resolve_model_path("org/tiny") == Path("org/tiny")
    assert looks_like_repo_id("org/other")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        resolve_model_path("./not/a/repo/id")


def test_cli_runs_a_cached_repo_offline(tmp_path):
    root = tmp_path / "hf-cache"
    make_cache(root)
    env = cli_env(HF_HUB_CACHE=str(root))
    proc = subprocess.run([sys.executable, "-m", "modelkit", "run", "--model", "org/tiny", "--prompt", "Hello",
                           "-n", "4", "-q"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    direct = subprocess.run([sys.executable, "-m", "modelkit", "run", "--model", str(FIXTURES / "llama_gqa"),
                             "--prompt", "Hello", "-n", "4", "-q"], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120)
    assert proc.stdout == direct.stdout


# ---- a stand-in hub on loopback ----------------------------------------------------------
class FakeHub:
    """Serves repos {repo_id: {path: bytes}} at one commit, the way the hub's API answers
    snapshot_download; records every request path."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                hub.handle(self, head=True)

            def do_GET(self):
                hub.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.timer = threading.Timer(SERVER_LIFETIME_S, self.stop)  # bounded: it stops itself
        self.timer.daemon = True

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def handle(self, req: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(req.path).path)
        self.requests.append((req.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo_id = "/".join(parts[2:4])
            if repo_id not in self.repos:
                return self.send(req, 404, b'{"error": "Repository not found"}', head,
                                 {"X-Error-Code": "RepoNotFound"})
            files = self.repos[repo_id]
            if parts[4] == "revision":
                info = {"id": repo_id, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
            else:
                info = [{"type": "file", "path": f, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                        for f, data in files.items()]
            return self.send(req, 200, json.dumps(info).encode(), head, {"Content-Type": "application/json"})
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, filename = "/".join(parts[:2]), "/".join(parts[4:])
            if repo_id not in self.repos:
                return self.send(req, 404, b"", head, {"X-Error-Code": "RepoNotFound"})
            data = self.repos[repo_id].get(filename)
            if data is None:
                return self.send(req, 404, b"", head, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
            return self.send(req, 200, data, head, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                                     "X-Repo-Commit": COMMIT,
                                                     "Content-Type": "application/octet-stream"})
        self.send(req, 404, b"", head, {})

    @staticmethod
    def send(req: BaseHTTPRequestHandler, status: int, body: bytes, head: bool, headers: dict[str, str]) -> None:
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if not head:
            req.wfile.write(body)


def fixture_repo(extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    files = {name: (FIXTURES / "llama_gqa" / name).read_bytes() for name in MODEL_FILES}
    files["tokenizer_config.json"] = json.dumps({"eos_token": "<|endoftext|>"}).encode()
    files.update({"pytorch_model.bin": b"pickle: must never be fetched", "README.md": b"# tiny",
                  "onnx/model.onnx": b"not needed", "modeling_tiny.py": b"code: never fetched"})
    files.update(extra or {})
    return files


def hub_env(hub: FakeHub, cache: Path) -> dict[str, str]:
    return cli_env(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(cache),
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="10", HF_TOKEN="",
                   NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")


def modelkit_cmd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelkit", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=180)


def test_download_fetches_only_what_modelkit_needs(tmp_path):
    cache = tmp_path / "hf-cache"
    with FakeHub({"org/tiny": fixture_repo()}) as hub:
        proc = modelkit_cmd("download", "org/tiny", env=hub_env(hub, cache))
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.strip().splitlines()[-1])
    assert folder == cache / "models--org--tiny" / "snapshots" / COMMIT
    assert sorted(p.name for p in folder.iterdir()) == sorted(MODEL_FILES + ["tokenizer_config.json"])
    fetched = {p for method, p in hub.requests if "/resolve/" in p}
    assert fetched and not any(x in p for p in fetched for x in ("pytorch_model", "README", "onnx", ".py"))
    assert (cache / "models--org--tiny" / "refs" / "main").read_text() == COMMIT
    # the downloaded snapshot is the fixture, and resolves offline afterwards
    model = modelkit.load(folder)
    assert model.generate([1, 2, 3], 4) == modelkit.load(FIXTURES / "llama_gqa").generate([1, 2, 3], 4)
    offline = modelkit_cmd("run", "--model", "org/tiny", "--prompt", "Hi", "-n", "2", "-q",
                           env=cli_env(HF_HUB_CACHE=str(cache)))
    assert offline.returncode == 0, offline.stderr


def test_download_to_a_local_dir_with_extra_patterns(tmp_path):
    target = tmp_path / "models" / "tiny"
    with FakeHub({"org/tiny": fixture_repo({"extra/notes.txt": b"hello"})}) as hub:
        proc = modelkit_cmd("download", "org/tiny", "--local-dir", str(target), "--include", "extra/*",
                            "--revision", "main", env=hub_env(hub, tmp_path / "hf-cache"))
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip().splitlines()[-1]) == target.resolve()
    assert (target / "model.safetensors").is_file() and (target / "extra" / "notes.txt").read_bytes() == b"hello"
    assert not (target / "pytorch_model.bin").exists()


def test_run_downloads_an_uncached_repo(tmp_path):
    with FakeHub({"org/tiny": fixture_repo()}) as hub:
        proc = modelkit_cmd("run", "--model", "org/tiny", "--prompt", "Hello", "-n", "4", "-q",
                            env=hub_env(hub, tmp_path / "hf-cache"))
    assert proc.returncode == 0, proc.stderr
    direct = modelkit_cmd("run", "--model", str(FIXTURES / "llama_gqa"), "--prompt", "Hello", "-n", "4", "-q",
                          env=cli_env())
    assert proc.stdout == direct.stdout
    assert any(p.startswith("/api/models/org/tiny/revision/") for _, p in hub.requests)


def test_download_errors_are_one_line(tmp_path):
    pickles_only = {"config.json": (FIXTURES / "llama_gqa" / "config.json").read_bytes(),
                    "pytorch_model.bin": b"pickle"}
    with FakeHub({"org/tiny": fixture_repo(), "org/old": pickles_only}) as hub:
        env = hub_env(hub, tmp_path / "hf-cache")
        missing = modelkit_cmd("download", "org/absent", env=env)
        old = modelkit_cmd("download", "org/old", env=env)
    for proc, needle in ((missing, "no such repository"), (old, "no *.safetensors")):
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1].startswith("modelkit: error: ")
        assert needle in proc.stderr and "Traceback" not in proc.stderr
    bad = modelkit_cmd("download", "not a repo id", env=cli_env())
    assert bad.returncode == 1 and "expected org/name" in bad.stderr


def test_allow_patterns_never_include_pickles_or_code():
    assert not any(p.endswith((".bin", ".pt", ".pth", ".py", ".pkl")) for p in ALLOW_PATTERNS)
    assert {"config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
            "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(ALLOW_PATTERNS)


def test_load_takes_a_repo_id_as_model_does(hf_cache):
    """modelkit.load("org/name") resolves a hub id exactly as --model does (the README's promise)."""
    make_cache(hf_cache)
    model = modelkit.load("org/tiny")
    assert model.generate([1, 2, 3], 4) == modelkit.load(FIXTURES / "llama_gqa").generate([1, 2, 3], 4)
    assert modelkit.load("org/tiny", revision=COMMIT).name == "llama"

"""Packaging: a real wheel, installed (not editable) in a fresh venv, runs `modelkit`.

Slow: builds a wheel and a venv. The venv sees the running interpreter's site-packages (through
a .pth file, after its own) so that numpy and friends are not downloaded; modelkit itself
comes from the wheel only. (``--system-site-packages`` would not do: from inside a venv it
means the base interpreter's packages, without the venv's dependencies.)
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import ROOT, fixture_path, load_cached

pytestmark = pytest.mark.slow

from modelkit.builtin import SHIPPED as SHIPPED_YAML  # noqa: E402
SKIP_TOP = {".git", "tests", "bench", "build", "dist", ".pytest_cache", ".venv", "venv"}


def _setuptools_builds_offline() -> bool:
    """True when this interpreter's setuptools meets pyproject's build requirement (>= 77)."""
    try:
        major = int(version("setuptools").split(".")[0])
    except Exception:
        return False
    return major >= 77


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MODELKIT_MAPPINGS")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(), timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A wheel built from a copy of the source tree, and a venv with it installed."""
    work = tmp_path_factory.mktemp("packaging")
    src = work / "src"
    src.mkdir()
    for item in ROOT.iterdir():
        if item.name in SKIP_TOP or item.name.endswith(".egg-info"):
            continue
        if item.is_dir():
            shutil.copytree(item, src / item.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(item, src / item.name)
    dist = work / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist)]
    if _setuptools_builds_offline():
        cmd.append("--no-build-isolation")
    cmd.append(str(src.resolve()))  # a path, never a bare name an index could answer
    _run(cmd, cwd=work)
    (wheel,) = dist.glob("modelkit-*.whl")

    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    venv_site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=work).stdout.strip()
    parent_sites = [p for p in dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"],
                                                                       sysconfig.get_paths()["platlib"]])
                    if Path(p).is_dir()]
    (Path(venv_site) / "_parent_site_packages.pth").write_text("\n".join(parent_sites) + "\n")
    # --ignore-installed: the system has modelkit installed editable; this copy goes into the venv
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed",
          str(wheel)], cwd=work)
    return {"wheel": wheel, "venv": venv, "python": python, "modelkit": bindir / "modelkit", "work": work}


def test_wheel_contents(built: dict[str, Path]) -> None:
    with zipfile.ZipFile(built["wheel"]) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    for arch in SHIPPED_YAML:
        assert f"modelkit/mappings/{arch}.yaml" in names
    assert "modelkit/mappings/__init__.py" in names
    assert "modelkit_granite/__init__.py" in names and "modelkit_gguf/__init__.py" in names
    assert "modelkit_ssm/__init__.py" in names
    assert "modelkit/nn/attention.py" in names and "modelkit/checkpoint/safetensors.py" in names
    # each plugin's mappings ship beside its code
    assert "modelkit_granite/mappings/granite.yaml" in names and "modelkit_gguf/mappings/llama.yaml" in names
    assert "modelkit_ssm/mappings/mamba.yaml" in names and "modelkit_ssm/mappings/lfm2.yaml" in names
    tops = {n.split("/")[0] for n in names}
    assert "plugins" not in tops and "mappings" not in tops and "tests" not in tops
    assert tops - {n for n in tops if n.endswith(".dist-info")} == {"modelkit", "modelkit_granite", "modelkit_gguf",
                                                                   "modelkit_ssm"}
    assert "[modelkit]" in entry_points and "core = modelkit.builtin" in entry_points
    assert "ssm = modelkit_ssm" in entry_points
    assert "[console_scripts]" in entry_points and "modelkit = modelkit.cli:main" in entry_points
    # every shipped mapping file is in the wheel
    for f in (ROOT / "mappings").glob("*.yaml"):
        assert f"modelkit/mappings/{f.name}" in names


def test_installed_copy_is_the_wheel(built: dict[str, Path]) -> None:
    code = ("import modelkit, modelkit_granite, modelkit.builtin as b; print(modelkit.__file__); "
            "print(modelkit_granite.__file__); print(b.mapping_file('llama')); "
            "print(modelkit.plugins.registry().architectures['granite'].mapping)")
    out = _run([str(built["python"]), "-c", code], cwd=built["work"]).stdout.splitlines()
    venv = str(built["venv"].resolve())
    for line in out:
        assert str(Path(line).resolve()).startswith(venv), out
        assert str(ROOT) not in line


def test_archs_from_the_venv(built: dict[str, Path]) -> None:
    proc = _run([str(built["modelkit"]), "archs"], cwd=built["work"])
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    expected = set(SHIPPED_YAML)
    import modelkit

    if "granite" in modelkit.architectures():  # the Granite 4.0-H plugin, once it registers
        expected.add("granite")
    if "llama-gguf" in modelkit.architectures():  # the GGUF plugin's mapping
        expected.add("llama-gguf")
    expected |= {"mamba", "lfm2"}  # the ssm plugin's
    assert expected <= set(rows), proc.stdout
    venv = str(built["venv"].resolve())
    for arch in SHIPPED_YAML:
        assert venv in rows[arch] or str(built["venv"]) in rows[arch], rows[arch]


def test_run_from_the_venv(built: dict[str, Path]) -> None:
    model = load_cached("gpt2")
    prompt = "Hello world"
    expected = model.tokenizer.decode(model.generate(model.tokenizer.encode(prompt), max_new_tokens=4,
                                                     temperature=0.0))
    proc = _run([str(built["modelkit"]), "run", "--model", str(fixture_path("gpt2")), "--prompt", prompt,
                 "--max-tokens", "4", "--temperature", "0"], cwd=built["work"])
    assert proc.stdout == expected + "\n"
    proc = _run([str(built["python"]), "-m", "modelkit", "validate", "--model", str(fixture_path("falcon_40b"))],
                cwd=built["work"])
    assert "ok" in proc.stdout


def test_plugins_run_from_the_venv(built: dict[str, Path], tmp_path: Path) -> None:
    """The plugins ship in the wheel: a Granite 4.0-H hybrid (modelkit_granite) and a GGUF file
    (modelkit_gguf) run from the venv with the same text as from the source tree."""
    import modelkit
    from gguf_files import fixture_as_gguf

    for model_path in (fixture_path("gh_hybrid"), fixture_as_gguf("llama_gqa", tmp_path / "tiny.gguf")):
        model = modelkit.load(model_path)
        expected = model.tokenizer.decode(model.generate(model.tokenizer.encode("Hello"), max_new_tokens=4,
                                                         temperature=0.0))
        proc = _run([str(built["modelkit"]), "run", "--model", str(model_path), "--prompt", "Hello",
                     "--max-tokens", "4", "--temperature", "0", "--quiet"], cwd=built["work"])
        assert proc.stdout.splitlines() == (expected + "\n").splitlines()  # text mode reads "\r" as "\n"

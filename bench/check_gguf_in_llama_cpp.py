"""Do the GGUF files `modelkit convert FOLDER OUT.gguf` writes run in llama.cpp itself?

Runs under the reference interpreter (llama-cpp-python installed; not part of the test suite)::

    ~/ref-venv/bin/python bench/check_gguf_in_llama_cpp.py [--modelkit PYTHON] [--types f32,f16,bf16,q8_0]
                                                           [--work DIR] [NAME_OR_FOLDER ...]

For each Hugging Face folder (a golden fixture's name, or a path; by default every fixture
llama.cpp's converter wrote, tests/fixtures/gguf/, and SmolLM2-135M's benchmark checkpoint) and
each type, ``modelkit convert`` (run with ``--modelkit``'s interpreter) writes the file;
``llama_cpp.Llama`` loads it (``logits_all``, 2 threads) and evaluates a fixed prompt of token
ids (no BOS added), then decodes greedily by taking the argmax of its logits. modelkit computes
the same on the folder (and on the written file, whose weights are the rounded ones llama.cpp
reads). Printed: a markdown table of what llama.cpp loaded, whether its greedy tokens equal
modelkit's on the folder and on the file, and the largest logit difference (f32: against the
folder; other types: against modelkit on the same file). A refusal of either side is its first
line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SMOLLM2 = Path("~/.cache/modelkit/bench/checkpoints/smollm2-135m-real").expanduser()
PROMPT, NEW = 12, 8
# what modelkit computes, run with the modelkit interpreter: folder and files -> logits, greedy tokens
MODELKIT_SIDE = r"""
import json, sys
import numpy as np
import modelkit
ids, new, out = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
results = {}
for path in sys.argv[4:]:
    m = modelkit.load(path)
    logits = m.forward(np.asarray(ids))
    seq = list(ids)
    for _ in range(new):  # greedy on full forwards: no stop token, as the llama.cpp side
        seq.append(int(np.argmax(m.forward(np.asarray(seq))[-1])))
    results[path] = (logits.astype(np.float32), seq[len(ids):])
np.savez(out, **{f"logits{i}": r[0] for i, r in enumerate(results.values())})
print(json.dumps([r[1] for r in results.values()]))
"""


def first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no message)"


def export(python: str, folder: Path, out: Path, dtype: str) -> str | None:
    """Write ``folder`` as ``out`` with modelkit convert; None, or its refusal."""
    proc = subprocess.run([python, "-m", "modelkit", "convert", str(folder), str(out), "--dtype", dtype, "--force"],
                          capture_output=True, text=True, cwd=ROOT)
    return None if proc.returncode == 0 else first_line(proc.stderr)


def modelkit_side(python: str, paths: list[Path], ids: list[int], work: Path) -> list[tuple[np.ndarray, list[int]]]:
    npz = work / "modelkit.npz"
    proc = subprocess.run([python, "-c", MODELKIT_SIDE, json.dumps(ids), str(NEW), str(npz), *map(str, paths)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"modelkit failed: {first_line(proc.stderr)}")
    tokens = json.loads(proc.stdout.strip().splitlines()[-1])
    data = np.load(npz)
    return [(data[f"logits{i}"], t) for i, t in enumerate(tokens)]


def llama_cpp_side(path: Path, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    """llama.cpp's logits for ``ids`` and its greedy continuation."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, n_threads=2, logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        logits = np.array(llm.scores[:len(ids)], dtype=np.float32)
        seq: list[int] = []
        for _ in range(NEW):
            seq.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([seq[-1]])
        return logits, seq
    finally:
        llm.close()


def llama_cpp_reason(path: Path) -> str | None:
    """The line of llama.cpp's log that says why it did not load ``path`` (its log is C-level
    stderr, so the load is repeated verbosely in a child process)."""
    code = f"import llama_cpp; llama_cpp.Llama(model_path={str(path)!r}, n_ctx=64, n_threads=2, verbose=True)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for line in proc.stderr.splitlines():
        if "error loading model:" in line:
            return line.split("error loading model:", 1)[1].strip()[:200]
    return None


def prompt_for(folder: Path) -> list[int]:
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    return [int(i) for i in np.random.default_rng(0).integers(3, vocab, PROMPT)]


def check(args: argparse.Namespace, label: str, folder: Path) -> list[list[str]]:
    work = args.work / label
    work.mkdir(parents=True, exist_ok=True)
    ids = prompt_for(folder)
    files, rows = {}, []
    for dtype in args.types:
        out = work / f"{label}-{dtype}.gguf"
        refusal = export(args.modelkit, folder, out, dtype)
        if refusal:
            rows.append([label, dtype, "not written: " + refusal, "-", "-", "-"])
        else:
            files[dtype] = out
    if not files:
        return rows
    ref = modelkit_side(args.modelkit, [folder, *files.values()], ids, work)
    folder_logits, folder_tokens = ref[0]
    for (dtype, path), (file_logits, file_tokens) in zip(files.items(), ref[1:]):
        try:
            logits, tokens = llama_cpp_side(path, ids)
        except Exception as exc:  # llama.cpp refuses the file: the reason from its log
            rows.append([label, dtype, f"refused: {llama_cpp_reason(path) or str(exc)[:200]}", "-", "-", "-"])
            continue
        against = folder_logits if dtype == "f32" else file_logits
        diff = float(np.max(np.abs(logits - against)))
        scale = float(np.max(np.abs(against)))
        rows.append([label, dtype, "yes", "yes" if tokens == folder_tokens else f"no ({tokens} vs {folder_tokens})",
                     "yes" if tokens == file_tokens else f"no ({tokens} vs {file_tokens})",
                     f"{diff:.1e} ({'folder' if dtype == 'f32' else 'file'}; logits up to {scale:.2g})"])
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="fixture names or Hugging Face folders (default: see above)")
    p.add_argument("--modelkit", default=shutil.which("python3") or "python3",
                   help="an interpreter with modelkit installed (default: python3 on PATH)")
    p.add_argument("--types", default="f32,f16,bf16,q8_0", type=lambda s: s.split(","))
    p.add_argument("--work", type=Path, default=Path("/tmp/modelkit-gguf-check"))
    p.add_argument("--keep", action="store_true", help="keep the written files")
    args = p.parse_args(argv)
    models = args.models or sorted(f.stem for f in (FIXTURES / "gguf").glob("*.gguf")) + \
        ([str(SMOLLM2)] if SMOLLM2.is_dir() else [])
    table = [["folder", "type", "llama.cpp loads it", "greedy = modelkit (folder)", "greedy = modelkit (file)",
              "max abs logit difference"]]
    for model in models:
        folder = Path(model) if "/" in model else FIXTURES / model
        table += check(args, folder.name, folder)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for j, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return 0


if __name__ == "__main__":
    sys.exit(main())

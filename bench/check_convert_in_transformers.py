"""Do the folders `modelkit convert FILE.gguf OUT` writes load in transformers, to the same logits?

Runs under the reference interpreter (transformers and torch installed; not part of the test
suite)::

    ~/ref-venv/bin/python bench/check_convert_in_transformers.py [--modelkit PYTHON] [--work DIR]
                                                                 [NAME ...]

For each golden fixture NAME (by default every fixture llama.cpp's converter wrote a GGUF of,
tests/fixtures/gguf/NAME.gguf), ``modelkit convert`` (run with ``--modelkit``'s interpreter)
writes that GGUF file as a folder; ``AutoModelForCausalLM.from_pretrained`` loads it in float32
and computes the logits of the fixture's reference ids (no cache: an all-Mamba Granite 4.0-H
asks transformers for a cache length it cannot give). modelkit computes them on the GGUF file
and on the written folder. Printed: a markdown table of the largest logit difference of
transformers on the folder against the fixture's reference (ref.npz) and against modelkit on
the GGUF file, of modelkit on the folder against modelkit on the GGUF file and of modelkit on
the GGUF file against the reference, and whether each
position's greedy token (argmax) agrees among all of them. A GGUF file of a family whose GGUF
form drops a setting (Mixtral's sliding window) differs from the reference; the comparison
with modelkit on the same file is the one that counts then.
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
MODELKIT_SIDE = r"""
import sys
import numpy as np
import modelkit
ids = np.load(sys.argv[1])["ids"]
np.savez(sys.argv[2], **{f"logits{i}": modelkit.load(p).forward(ids).astype(np.float32)
                         for i, p in enumerate(sys.argv[3:])})
"""


def first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no message)"


def check(name: str, python: str, work: Path) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM

    src = FIXTURES / "gguf" / f"{name}.gguf"
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([python, "-m", "modelkit", "convert", str(src), str(out)], capture_output=True, text=True)
    if proc.returncode:
        return [name, "refused: " + first_line(proc.stderr), "", "", "", "", ""]
    ref_path = FIXTURES / name / "ref.npz"
    ref = np.load(ref_path)
    mk_path = work / f"{name}.modelkit.npz"
    proc = subprocess.run([python, "-c", MODELKIT_SIDE, str(ref_path), str(mk_path), str(src), str(out)],
                          capture_output=True, text=True)
    if proc.returncode:
        return [name, "modelkit failed: " + first_line(proc.stderr), "", "", "", "", ""]
    mk = np.load(mk_path)
    on_gguf, on_folder = mk["logits0"], mk["logits1"]
    try:
        model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
        model.eval()
        with torch.no_grad():
            hf = model(torch.from_numpy(ref["ids"][None]), use_cache=False).logits[0].float().numpy()
    except Exception as exc:  # one row per family, whatever transformers says
        return [name, f"transformers failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", "", "", "", "", ""]
    same = all(np.array_equal(np.argmax(a, -1), np.argmax(on_gguf, -1)) for a in (hf, on_folder))
    return [name, f"{model.config.model_type} ({type(model).__name__})", f"{np.abs(hf - ref['logits']).max():.2e}",
            f"{np.abs(hf - on_gguf).max():.2e}", f"{np.abs(on_folder - on_gguf).max():.2e}",
            f"{np.abs(on_gguf - ref['logits']).max():.2e}", "yes" if same else "NO"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--modelkit", default=str(Path("/tmp/venv-ggufback/bin/python")),
                    help="the interpreter modelkit is installed in")
    ap.add_argument("--work", type=Path, default=Path("/tmp/modelkit-check-convert"))
    args = ap.parse_args()
    names = args.names or sorted(p.stem for p in (FIXTURES / "gguf").glob("*.gguf"))
    args.work.mkdir(parents=True, exist_ok=True)
    print("| fixture | transformers loaded | transformers vs ref | transformers vs modelkit (GGUF) "
          "| modelkit folder vs GGUF | modelkit GGUF vs ref | greedy tokens agree |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        print("| " + " | ".join(check(name, args.modelkit, args.work)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""lm-evaluation-harness's local-completions model runs a small multiple-choice task from a local
JSONL file against a live server (bench/serve_lm_eval.py). lm-eval is no dependency of modelkit:
this runs only with MODELKIT_LM_EVAL_PYTHON naming the python of a venv that has lm-eval[api]
(docs/serving.md), and is slow (the harness takes a minute to start)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, cli_env
from servers import llama_folder  # noqa: F401

LM_EVAL_PYTHON = os.environ.get("MODELKIT_LM_EVAL_PYTHON")


@pytest.mark.slow
@pytest.mark.skipif(not LM_EVAL_PYTHON, reason="set MODELKIT_LM_EVAL_PYTHON to a venv's python with lm-eval[api]")
def test_lm_eval_local_completions(llama_folder) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_lm_eval.py"), "--model", str(llama_folder),
                          "--lm-eval-python", LM_EVAL_PYTHON], capture_output=True, text=True, env=cli_env(),
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("|modelkit_capitals"))
    accuracy = float(row.split("|")[7])
    assert 0.0 <= accuracy <= 1.0

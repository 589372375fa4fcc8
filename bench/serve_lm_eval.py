"""lm-evaluation-harness against `modelkit serve`: a small multiple-choice task from a local
JSONL file (bench/lm_eval/capitals.jsonl, no hub), through its ``local-completions`` model.

    python3 bench/serve_lm_eval.py --model MODEL --lm-eval-python /tmp/serve/lmeval-venv/bin/python

lm-eval is not a dependency of modelkit (it brings datasets, scikit-learn and more, and its
Hugging Face extra brings torch): install it in a venv of its own (``pip install 'lm-eval[api]'``,
which needs no torch) and name that venv's python. The harness tokenizes through the server's
/tokenize endpoint (``tokenizer_backend=remote``) and scores each choice's tokens with
``echo`` and ``logprobs``. Prints the harness's table; exits with its code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or as bench.*
from bench.served import modelkit_server  # noqa: E402

HERE = Path(__file__).resolve().parent / "lm_eval"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder or file for `modelkit serve`")
    p.add_argument("--lm-eval-python", required=True, help="the python of a venv with lm-eval[api] installed")
    p.add_argument("--limit", type=int, default=None, help="questions at most (default all ten)")
    args = p.parse_args(argv)
    with modelkit_server(["--model", args.model, "--served-model-name", "modelkit"]) as port:
        with tempfile.TemporaryDirectory() as tasks:
            text = (HERE / "capitals.yaml").read_text().replace("DATA_FILE", str(HERE / "capitals.jsonl"))
            (Path(tasks) / "capitals.yaml").write_text(text)
            model_args = (f"model=modelkit,base_url=http://127.0.0.1:{port}/v1/completions,"
                          f"tokenizer_backend=remote,num_concurrent=1,max_retries=1")
            cmd = [args.lm_eval_python, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
                   "--tasks", "modelkit_capitals", "--include_path", tasks]
            if args.limit:
                cmd += ["--limit", str(args.limit)]
            env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
            return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())

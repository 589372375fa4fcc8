"""A GGUF checkpoint as a float32 Hugging Face folder (config.json + model.safetensors).

Runs under the reference interpreter (``--ref-python``): transformers reads the GGUF,
dequantises it and undoes llama.cpp's q/k row permutation; the weights are written as
float32 safetensors. The benchmark then gives every engine these same weights::

    ~/ref-venv/bin/python bench/gguf_to_hf.py SmolLM2-135M-Instruct.Q4_1.gguf OUT_FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    import torch
    from transformers import AutoModelForCausalLM

    gguf = Path(argv[0]).resolve()
    out = Path(argv[1])
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses models read from GGUF: write the float32 tensors and config directly
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = config["dtype"] = "float32"
    config["architectures"] = [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(out))
    except Exception as exc:  # the tokenizer is not needed to time token ids
        print(f"gguf_to_hf: tokenizer not exported ({exc})", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

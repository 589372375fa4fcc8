"""A float32 GGUF of a Hugging Face folder, for the llama.cpp reference.

Runs under the reference interpreter with llama.cpp's own converter, ``convert_hf_to_gguf.py``
from the llama-cpp-python source distribution (``vendor/llama.cpp``; its ``gguf-py`` comes
first on the path). The converter is imported from there at run time, never copied. One
change in behaviour: a tokenizer whose pre-tokenizer the converter does not recognise (the
random-weight checkpoints carry a small synthetic one) is written as plain GPT-2 byte-level
BPE instead of stopping the conversion; tokenisation plays no part in the timings::

    ~/ref-venv/bin/python bench/make_gguf.py LLAMA_CPP_DIR HF_FOLDER OUT.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    llama_cpp_dir, folder, out = (Path(a).resolve() for a in argv)
    script = llama_cpp_dir / "convert_hf_to_gguf.py"
    if not script.is_file():
        print(f"make_gguf: {script} not found", file=sys.stderr)
        return 2
    sys.path.insert(0, str(llama_cpp_dir / "gguf-py"))
    sys.path.insert(0, str(llama_cpp_dir))
    import convert_hf_to_gguf as convert
    from conversion import base

    original = base.TextModel.get_vocab_base_pre

    def vocab_base_pre(self, tokenizer):  # type: ignore[no-untyped-def]
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", str(folder), "--outtype", "f32", "--outfile", str(out)]
    convert.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

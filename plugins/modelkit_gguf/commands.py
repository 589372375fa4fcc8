"""The plugin's command line: ``modelkit convert SRC OUT`` (OUT a folder, or a ``.gguf`` file)."""

from __future__ import annotations

import argparse


def configure_convert(p: argparse.ArgumentParser) -> None:
    """The arguments of ``modelkit convert``."""
    p.add_argument("src", metavar="SRC", help="GGUF file, or a Hugging Face folder when OUT is a .gguf file")
    p.add_argument("out", metavar="OUT", help="output folder (created; must be empty unless --force), or a "
                                              ".gguf file to write a Hugging Face folder as GGUF")
    p.add_argument("--dtype", default="float32",
                   choices=["float32", "f32", "bfloat16", "bf16", "float16", "f16", "q8_0"],
                   help="tensor dtype (default float32; q8_0 for a .gguf OUT only)")
    p.add_argument("--arch", help="architecture of SRC (default: detected)")
    p.add_argument("--mapping", help="YAML mapping file for SRC instead of the registered ones")
    p.add_argument("--force", action="store_true", help="overwrite files in a non-empty OUT")


def run_convert(args: argparse.Namespace) -> int:
    """Write a checkpoint (a GGUF file) as a Hugging Face folder, or a folder as a GGUF file;
    print what was written."""
    if args.out.lower().endswith(".gguf"):
        from .export import export

        done = export(args.src, args.out, dtype=args.dtype, force=args.force)
        print(f"{done['file']}: {done['tensors']} tensors as {done['dtype']} "
              f"({done['source_arch']} -> {done['target_arch']})")
        return 0
    from .convert import convert

    done = convert(args.src, args.out, dtype=args.dtype, arch=args.arch, mapping=args.mapping,
                   force=args.force, progress=True)
    print(f"{done['folder']}: {done['parameters']:,} parameters as {done['dtype']} "
          f"({done['source_arch']} -> {done['target_arch']}); {', '.join(done['files'])}")
    return 0

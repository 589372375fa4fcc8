"""The plugin's command line: ``modelkit convert SRC OUT`` (OUT a folder, or a ``.gguf`` file)."""

from __future__ import annotations

import argparse
import signal
import sys


def configure_convert(p: argparse.ArgumentParser) -> None:
    """The arguments of ``modelkit convert``."""
    p.add_argument("src", metavar="SRC", help="GGUF file (or any checkpoint modelkit loads); a Hugging Face "
                                              "folder when OUT is a .gguf file")
    p.add_argument("out", metavar="OUT", help="output folder (created; must be empty unless --force), or a "
                                              ".gguf file to write a Hugging Face folder as GGUF")
    p.add_argument("--dtype", default="float32",
                   choices=["float32", "f32", "bfloat16", "bf16", "float16", "f16", "q8_0"],
                   help="tensor dtype (default float32; q8_0 for a .gguf OUT only)")
    p.add_argument("--clip", action="store_true",
                   help="clip values beyond --dtype's range (float16 ends at 65504) instead of refusing them")
    p.add_argument("--arch", help="architecture of SRC (default: detected)")
    p.add_argument("--mapping", help="YAML mapping file for SRC instead of the registered ones")
    p.add_argument("--force", action="store_true", help="overwrite files in a non-empty OUT")


def _ignore_file_size_signal() -> None:
    if hasattr(signal, "SIGXFSZ"):
        # past a file-size limit (ulimit -f) the kernel would kill the process, leaving its
        # temporary file; ignored, the write fails with EFBIG and is reported and cleaned up
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _note_clipped(clipped: dict[str, int], dtype: str, largest: float | None) -> None:
    if clipped:
        names = ", ".join(list(clipped)[:3]) + (", ..." if len(clipped) > 3 else "")
        to = f" to ±{largest:.5g}" if largest is not None else " to their type's largest value"
        print(f"modelkit: note: clipped {sum(clipped.values()):,} value(s) beyond {dtype}'s range{to}, "
              f"in {len(clipped)} tensor(s): {names}", file=sys.stderr)


def run_convert(args: argparse.Namespace) -> int:
    """Write a checkpoint (a GGUF file) as a Hugging Face folder, or a folder as a GGUF file;
    print what was written."""
    from .convert import convert, dtype_max

    _ignore_file_size_signal()
    if args.out.lower().endswith(".gguf"):
        from .export import export

        done = export(args.src, args.out, dtype=args.dtype, arch=args.arch, mapping=args.mapping,
                      force=args.force, clip=args.clip)
        limits = sorted(set(done["limits"].values()))
        _note_clipped(done["clipped"], "its type", limits[0] if len(limits) == 1 else None)
        print(f"{done['file']}: {done['tensors']} tensors as {done['dtype']} "
              f"({done['source_arch']} -> {done['target_arch']})")
        return 0
    done = convert(args.src, args.out, dtype=args.dtype, arch=args.arch, mapping=args.mapping,
                   force=args.force, clip=args.clip, progress=True)
    _note_clipped(done["clipped"], done["dtype"], dtype_max(done["dtype"]))
    print(f"{done['folder']}: {done['parameters']:,} parameters as {done['dtype']} "
          f"({done['source_arch']} -> {done['target_arch']}); {', '.join(done['files'])}")
    return 0

"""Running work that model data controls under hard limits: time, memory and output size.

A chat template is code from the model folder. jinja2's sandbox stops it from reaching Python,
but not from looping for hours (``{% for i in range(10**5) %}`` three deep), allocating without
bound or writing a gigabyte prompt. Counting inside the renderer cannot catch every loop (a
``for`` over a list runs no hook), so the render runs in a forked child process: the child
caps its own address space, the parent kills it at the deadline, and the result comes back
through a pipe read no further than the output limit. Encoding text runs the same way: a
tokenizer.json's regexes can backtrack for minutes, and the ``tokenizers`` library panics (a
Rust panic, printed on stderr) when one gives up. The child's stdout and stderr go to the null
device, so nothing it prints reaches the terminal; what it raises comes back as data. Where
``fork`` is missing (Windows) the work runs in-process with its own guards only.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

# what the child hands back: text (a rendered template) or token ids; JSON carries either
Result = TypeVar("Result", str, list)


@dataclass(frozen=True)
class Limits:
    """What one run may use: wall-clock seconds, extra memory, and output size (characters of
    text, or items of a list)."""

    seconds: float
    memory_bytes: int
    output_chars: int


class LimitExceeded(Exception):
    """The child ran out of time, memory or output room, or died; ``str()`` says which."""


class ChildFailed(Exception):
    """The function raised in the child: ``kind`` is the exception's class name."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def run_bounded(fn: Callable[[], Result], limits: Limits) -> Result:
    """``fn()`` (which returns text or a list of numbers) in a child process held to ``limits``.

    Raises :class:`LimitExceeded` when a limit is hit and :class:`ChildFailed` with the
    exception's name and message when ``fn`` raises."""
    if not hasattr(os, "fork"):
        return _checked_output(fn(), limits)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child(fn, limits, write_end)
    os.close(write_end)
    try:
        data = _read_until(read_end, pid, limits)
    finally:
        os.close(read_end)
    reply = json.loads(data.decode("utf-8"))
    if "text" in reply:
        return reply["text"]
    if reply.get("limit"):
        raise LimitExceeded(reply["message"])
    raise ChildFailed(reply["kind"], reply["message"])


def _checked_output(result: Result, limits: Limits) -> Result:
    if len(result) > limits.output_chars:
        what = "characters" if isinstance(result, str) else "items"
        raise LimitExceeded(f"it wrote more than {limits.output_chars:,} {what}")
    return result


def _child(fn: Callable[[], Result], limits: Limits, write_end: int) -> None:
    """Run ``fn`` with the memory cap set, send the reply as JSON and exit without running the
    parent's exit handlers or flushing its buffers (which would print their contents twice)."""
    status = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        _silence_output()
        _cap_memory(limits.memory_bytes)
        try:
            reply = {"text": _checked_output(fn(), limits)}
        except LimitExceeded as exc:
            reply = {"limit": True, "message": str(exc)}
        except MemoryError:
            reply = {"limit": True, "message": f"it needed more than {limits.memory_bytes >> 20} MiB of memory"}
        except RecursionError:
            reply = {"kind": "RecursionError", "message": "it recursed too deeply"}
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as data
            reply = {"kind": type(exc).__name__, "message": str(exc)[:2000]}
        data = json.dumps(reply).encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(write_end, view):]
    except BaseException:  # noqa: BLE001 - the parent sees a child that died without a reply
        status = 1
    finally:
        os._exit(status)


def _silence_output() -> None:
    """Point the child's stdout and stderr at the null device: a library's own printing (a Rust
    panic message, a warning) must not reach the terminal; errors come back in the reply."""
    import faulthandler

    faulthandler.disable()  # it writes to a descriptor of its own; the parent reports a crash
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def _cap_memory(extra: int) -> None:
    """Limit the child's address space to what it has now (the parent's, shared copy-on-write)
    plus ``extra`` bytes."""
    try:
        import resource
    except ImportError:  # not on this platform: time and output limits still hold
        return
    current = _address_space()
    if current is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = current + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _address_space() -> int | None:
    """This process's virtual memory size in bytes (Linux), or None where unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_until(fd: int, pid: int, limits: Limits) -> bytes:
    """The child's reply, read until it closes the pipe; the child is killed at the deadline or
    when it sends more than the output limit allows."""
    deadline = time.monotonic() + limits.seconds
    # JSON takes at most 6 bytes per character (\uXXXX) or 12 per token id ("4294967295, "),
    # plus the envelope
    most = 12 * limits.output_chars + 4096
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LimitExceeded(f"it ran for more than {limits.seconds:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size > most:
                raise LimitExceeded(f"it wrote more than {limits.output_chars:,} characters")
            chunks.append(chunk)
    except BaseException:
        _kill(pid)
        raise
    _, status = os.waitpid(pid, 0)
    if not chunks:
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT:
            # what Rust code (the tokenizers library) does when an allocation fails
            raise LimitExceeded(f"it aborted, most likely for want of memory (it may use "
                                f"{limits.memory_bytes >> 20:,} MiB more)")
        if os.WIFSIGNALED(status):
            raise LimitExceeded(f"it was killed by signal {os.WTERMSIG(status)}")
        raise LimitExceeded("it died without an answer")
    return b"".join(chunks)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass

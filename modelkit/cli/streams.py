"""The `modelkit` command's standard streams and signals.

A command may start with a standard stream closed (`modelkit run ... >&-`, `<&-`), write its
output to a full device (`> /dev/full`) or be stopped by SIGTERM. Each ends in one line on
stderr and a non-zero exit, never a traceback:

- a closed descriptor 0, 1 or 2 is filled with /dev/null at once, so no file the command opens
  later can take its number (and receive what is meant for a terminal); a closed stdout is an
  error before the command runs, a closed stdin only when the command reads it;
- writing stdout fails (no space, an I/O error): :class:`OutputError`;
- SIGTERM raises :class:`Terminated`, so cleanups run as they do on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import ModelkitError


class OutputError(ModelkitError):
    """Standard output is closed or cannot be written."""


class InputError(ModelkitError):
    """Standard input is closed, and the command needed it."""


class Terminated(BaseException):
    """The process received SIGTERM (a BaseException, like KeyboardInterrupt: no ``except
    Exception`` swallows it, every ``finally`` runs)."""


def fill_closed_descriptors() -> set[int]:
    """Open /dev/null on each of descriptors 0, 1, 2 that is closed; returns those numbers."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
            try:
                null = os.open(os.devnull, os.O_RDWR)
            except OSError:
                continue
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if 2 in closed or sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # errors are lost, exit codes are not
    return closed


def stdin_or_error(what: str) -> Any:
    """``sys.stdin``, or an InputError naming ``what`` needed it when it is closed."""
    if sys.stdin is None:
        raise InputError(f"standard input is closed; {what}")
    return sys.stdin


class GuardedOutput:
    """``sys.stdout`` whose write failures (a full device, an I/O error) are OutputErrors.
    A closed pipe stays a BrokenPipeError: the reader left, which is not the command's fault."""

    def __init__(self, stream: Any):
        self.stream = stream

    def write(self, text: str) -> int:
        return self._call(self.stream.write, text)

    def flush(self) -> None:
        self._call(self.stream.flush)

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"standard output: cannot write ({exc.strerror or exc})") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def silence_stdout() -> None:
    """Point descriptor 1 at /dev/null, so Python's own flush at exit cannot fail again on
    output that could not be written."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.__stdout__.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def guarded_streams() -> Iterator[None]:
    """While a command runs: stdout guarded, SIGTERM as :class:`Terminated`."""
    if sys.stdout is None:
        raise OutputError("standard output is closed; send it to a file or to /dev/null instead")
    previous_stdout = sys.stdout
    sys.stdout = GuardedOutput(previous_stdout)
    previous_term = None
    try:
        previous_term = signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, AttributeError):  # not the main thread, or no SIGTERM
        pass
    try:
        try:
            yield
        except SystemExit as exc:  # argparse's --help, --version and usage errors
            if not exc.code:
                sys.stdout.flush()
            raise
        sys.stdout.flush()  # a full device may only show when the last output is flushed
    except OutputError:
        if previous_stdout is sys.__stdout__:
            silence_stdout()
        raise
    finally:
        sys.stdout = previous_stdout
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)

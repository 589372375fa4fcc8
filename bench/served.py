"""`modelkit serve` in a child process for the serving benchmarks: a free loopback port, the
server started on it, waited for, and stopped with SIGTERM at the end."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def modelkit_server(flags: list[str]) -> Iterator[int]:
    """Run ``modelkit serve FLAGS --port P`` and yield P once it accepts connections; a server
    that exits before that ends the benchmark with its error output."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "modelkit", "serve", *flags, "--port", str(port)],
                              stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"the server exited: {server.stderr.read()}")
                time.sleep(0.2)
        yield port
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)

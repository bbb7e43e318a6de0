"""Process helpers for whatever starts subprocesses (trainers, model servers): a free port, dying with the parent."""

from __future__ import annotations

import ctypes
import signal
import socket
import sys


def die_with_parent() -> None:
    """In the child: get SIGKILL when MathSE dies, even by SIGKILL, so a killed stage never
    leaves a trainer writing into the output dir its rerun is about to use (Linux only)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server or a launcher about to start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

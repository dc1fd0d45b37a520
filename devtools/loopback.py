"""Services on 127.0.0.1 for tests and benchmarks: a free port and a real S3 server (moto)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

MOTO_START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(timeout_s: float = MOTO_START_TIMEOUT_S) -> tuple[subprocess.Popen, str]:
    """A moto S3 server from this interpreter on a free loopback port: (process, endpoint URL).

    Returns once the server answers; the caller stops it with `stop_process`."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return proc, url
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start within {timeout_s:.0f} s") from None
            time.sleep(0.2)


def stop_process(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Terminate, then kill if it does not exit in `timeout_s`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)

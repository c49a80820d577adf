"""A real Tally server: `python main.py serve` in a subprocess on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


class ServerUrl(str):
    """The base URL of a running server (a plain str), also naming its log file and process."""

    log_path: Path
    process: subprocess.Popen[bytes] | None

    def __new__(cls, base: str, log_path: Path, process: subprocess.Popen[bytes] | None = None) -> ServerUrl:
        url = super().__new__(cls, base)
        url.log_path = log_path
        url.process = process
        return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(env: dict[str, str], *, port: int | None = None, timeout: float = 60) -> Iterator[ServerUrl]:
    """Start a server with these TALLY_* settings; yield its base URL; stop it.

    The URL is a `ServerUrl`: its `log_path` names the file holding the server's
    output (kept after the server stops, so it can be read once all is flushed);
    its `process` is the server's Popen (a test may kill it).
    """
    port = port or free_port()
    full_env = {**os.environ, "TALLY_HOST": "127.0.0.1", "TALLY_PORT": str(port), **env}
    log = tempfile.NamedTemporaryFile(prefix=f"tally-{port}-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "main.py", "serve"], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
    )
    base = ServerUrl(f"http://127.0.0.1:{port}", Path(log.name), process)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                output = Path(log.name).read_text()
                raise RuntimeError(f"server exited early:\n{output}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become healthy in time")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()

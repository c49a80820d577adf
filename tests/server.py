"""A real Tally server in a subprocess on a loopback port (`python main.py serve` unless told otherwise).

The benchmarks start theirs here too (bench/common.py), with a uvicorn command of their own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SERVE = ("{python}", "main.py", "serve")


class ServerUrl(str):
    """The base URL of a running server (a plain str), also naming its port, log file and process."""

    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None

    def __new__(
        cls, base: str, log_path: Path, process: subprocess.Popen[bytes] | None = None, port: int = 0
    ) -> ServerUrl:
        url = super().__new__(cls, base)
        url.port = port
        url.log_path = log_path
        url.process = process
        return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(
    env: Mapping[str, str],
    *,
    port: int | None = None,
    timeout: float = 60,
    command: Sequence[str] = SERVE,
    base_env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    cwd: Path = ROOT,
) -> Iterator[ServerUrl]:
    """Start a server with these settings; yield its base URL once /healthz answers; stop it.

    `command` may use `{python}` and `{port}` and runs in `cwd`; its environment is `base_env` (default
    this process's) plus TALLY_HOST, TALLY_PORT and `env`. The URL is a `ServerUrl`:
    its `log_path` names the file holding the server's output (kept after the server
    stops, so it can be read once all is flushed); its `process` is the server's Popen
    (a test may kill it).
    """
    port = port or free_port()
    full_env = {**(os.environ if base_env is None else base_env), "TALLY_HOST": "127.0.0.1", "TALLY_PORT": str(port)}
    full_env.update(env)
    if log_path is None:
        log_path = Path(tempfile.NamedTemporaryFile(prefix=f"tally-{port}-", suffix=".log", delete=False).name)  # noqa: SIM115
    args = [part.format(python=sys.executable, port=port) for part in command]
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    base = ServerUrl(f"http://127.0.0.1:{port}", log_path, process, port)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become healthy in time; see {log_path}")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

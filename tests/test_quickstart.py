"""The README's quick start, run as written in a fresh clone: no uv on PATH, an empty HOME.

The serve command runs here; the test command is what `.ci/run` runs (a suite
starting itself would recurse).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import token
from tests.server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a cold install from a clean clone may take minutes

ROOT = Path(__file__).resolve().parent.parent
# Debian's Python is externally managed (PEP 668): the case the quick start must survive.
BARE_PYTHON = Path("/usr/bin/python3") if Path("/usr/bin/python3").exists() else Path(sys.executable)
LEAKY_VARIABLES = ("UV_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYENV", "CONDA_", "TALLY_")


def quick_start_commands(readme: Path) -> list[str]:
    """The commands of the README's Quick start code block, comments dropped."""
    section = readme.read_text().split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def bare_environment(home: Path, bin_dir: Path) -> dict[str, str]:
    """This environment minus uv, any virtualenv and TALLY_* settings; `python3` is BARE_PYTHON."""
    (bin_dir / "python3").symlink_to(BARE_PYTHON)
    path = [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "uv").exists()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY_VARIABLES)}
    return {**env, "HOME": str(home), "PATH": os.pathsep.join([str(bin_dir), *path])}


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    target = tmp_path / "tally"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True)
    return target


def wait_healthy(base: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the serve command exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not healthy after {timeout} s:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_the_serve_command_works_from_a_clean_clone(clone: Path, tmp_path: Path) -> None:
    serve = next(command for command in quick_start_commands(clone / "README.md") if command.endswith(" serve"))
    (tmp_path / "home").mkdir()
    (tmp_path / "bin").mkdir()
    env = bare_environment(tmp_path / "home", tmp_path / "bin")
    port = free_port()
    env["TALLY_PORT"] = str(port)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            serve, shell=True, cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, log, timeout=300)
        headers = {"Authorization": f"Bearer {token('org_quick', 'admin')}"}
        create = 'mutation { createLoad(input: {orgId: "org_quick", status: ASSIGNED}) { id } }'
        count = '{ countLoadsByStatus(orgId: "org_quick") { assigned total } }'
        assert "errors" not in httpx.post(f"{base}/graphql", json={"query": create}, headers=headers).json()
        body = httpx.post(f"{base}/graphql", json={"query": count}, headers=headers).json()
        assert body == {"data": {"countLoadsByStatus": {"assigned": 1, "total": 1}}}
    finally:
        stop(process)
    assert (clone / "tally.db").exists(), "serves the embedded SQLite default"
    assert (clone / ".uv-bootstrap").is_dir(), "with no uv on PATH, fetched its own"


def test_without_pip_uv_comes_from_the_index_checked(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bootstrap", ROOT / "run.py")
    assert spec and spec.loader
    bootstrap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bootstrap)
    wheel = bootstrap.download_from_index(tmp_path)
    uv = tmp_path / "bin" / "uv"
    bootstrap.unpack_uv(wheel, uv)
    version = subprocess.run([str(uv), "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith(f"uv {bootstrap.UV_VERSION} ")
    assert shutil.which("uv", path=str(uv.parent))

#!/usr/bin/env python3
"""Run Tally with nothing but Python 3: find or fetch uv, then `uv run --locked ...`.

    python3 run.py [serve]         main.py's commands: serve, migrate, token, recalc, ...
    python3 run.py test [ARGS]     pytest ARGS
    python3 run.py lint            ruff check . and mypy .
    python3 run.py uv ARGS         uv itself, e.g. `python3 run.py uv lock`

uv is the one on PATH, else a private copy in .uv-bootstrap/, fetched once: with
`pip download` when pip exists (it honours pip.conf and PIP_INDEX_URL), else
straight from the package index (PIP_INDEX_URL / UV_INDEX_URL / UV_DEFAULT_INDEX,
default PyPI), its sha256 checked. Nothing is installed into any Python, so an
externally managed one (PEP 668) is fine. Standard library only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin

UV_VERSION = "0.13.9"
ROOT = Path(__file__).resolve().parent
PRIVATE_UV = ROOT / ".uv-bootstrap" / UV_VERSION / ("uv.exe" if os.name == "nt" else "uv")
DEFAULT_INDEX = "https://pypi.org/simple"


def say(message: str) -> None:
    print(f"run.py: {message}", file=sys.stderr, flush=True)


def find_uv() -> str:
    on_path = shutil.which("uv")
    if on_path:
        return on_path
    if not PRIVATE_UV.is_file():
        say(f"no uv on PATH; fetching uv {UV_VERSION} into {PRIVATE_UV.parent.relative_to(ROOT)}/ (once)")
        with tempfile.TemporaryDirectory(prefix="uv-wheel-") as scratch:
            wheel = download_with_pip(Path(scratch)) or download_from_index(Path(scratch))
            unpack_uv(wheel, PRIVATE_UV)
    return str(PRIVATE_UV)


def download_with_pip(into: Path) -> Path | None:
    """The uv wheel for this platform via pip (a download is not an install: PEP 668 allows it)."""
    if importlib.util.find_spec("pip") is None:
        return None
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--dest",
        str(into),
        f"uv=={UV_VERSION}",
    ]
    if subprocess.call(command) != 0:
        say("pip download failed; trying the package index directly")
        return None
    return next(into.glob("uv-*.whl"), None)


def download_from_index(into: Path) -> Path:
    index = (
        os.environ.get("UV_DEFAULT_INDEX")
        or os.environ.get("UV_INDEX_URL")
        or os.environ.get("PIP_INDEX_URL")
        or DEFAULT_INDEX
    )
    files = list_index_files(index.rstrip("/") + "/uv/")
    wanted = [f for f in files if f[0].startswith(f"uv-{UV_VERSION}-") and fits_this_machine(f[0])]
    if not wanted:
        sys.exit(f"run.py: {index} has no uv {UV_VERSION} wheel for {platform.system()} {platform.machine()}")
    filename, url, sha256 = wanted[0]
    if not sha256:
        sys.exit(f"run.py: {index} gives no sha256 for {filename}; refusing to run it unchecked")
    wheel = into / filename
    with urllib.request.urlopen(url, timeout=120) as response, wheel.open("wb") as out:
        shutil.copyfileobj(response, out)
    if hashlib.sha256(wheel.read_bytes()).hexdigest() != sha256:
        sys.exit(f"run.py: {filename} does not match the sha256 the index gives")
    return wheel


def list_index_files(page: str) -> list[tuple[str, str, str]]:
    """(filename, absolute url, sha256 or "") of a simple index page, JSON (PEP 691) or HTML (PEP 503)."""
    accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
    request = urllib.request.Request(page, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=60) as response:
        base = response.geturl()
        is_json = "json" in response.headers.get("Content-Type", "")
        body = response.read().decode("utf-8")
    if is_json:
        return [
            (f["filename"], urljoin(base, f["url"]), f.get("hashes", {}).get("sha256", ""))
            for f in json.loads(body)["files"]
        ]
    links = AnchorCollector()
    links.feed(body)
    files = []
    for href in links.hrefs:
        url, fragment = urldefrag(urljoin(base, href))
        sha256 = fragment[len("sha256=") :] if fragment.startswith("sha256=") else ""
        files.append((url.rsplit("/", 1)[-1], url, sha256))
    return files


class AnchorCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def fits_this_machine(wheel_name: str) -> bool:
    """Whether one of the wheel's platform tags (e.g. manylinux_2_17_x86_64) is this OS and CPU."""
    machine = platform.machine().lower()
    system = platform.system()
    if system == "Linux":
        family = "manylinux" if platform.libc_ver()[0] == "glibc" else "musllinux"
        arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    elif system == "Darwin":
        family, arch = "macosx", "arm64" if machine in ("arm64", "aarch64") else "x86_64"
    elif system == "Windows":
        family, arch = "win", {"amd64": "amd64", "arm64": "arm64"}.get(machine, "32")
    else:
        return False
    platform_tags = wheel_name[: -len(".whl")].split("-")[-1].split(".")
    return any(tag.startswith(family) and tag.endswith(arch) for tag in platform_tags)


def unpack_uv(wheel: Path, target: Path) -> None:
    member = f"uv-{UV_VERSION}.data/scripts/{target.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        shutil.copyfileobj(archive.open(member), out)
    os.chmod(out.name, 0o755)
    os.replace(out.name, target)  # atomic: a concurrent run sees no half-written binary


def uv_commands(args: list[str]) -> list[list[str]]:
    """The uv invocations for run.py's arguments (each without the uv executable)."""
    command, rest = (args[0], args[1:]) if args else ("serve", [])
    if command == "uv":
        return [rest]
    if command == "test":
        return [["run", "--locked", "pytest", *rest]]
    if command == "lint":
        return [["run", "--locked", "ruff", "check", ".", *rest], ["run", "--locked", "mypy", "."]]
    return [["run", "--locked", "python", "main.py", *args]]


def main(args: list[str]) -> int:
    os.chdir(ROOT)
    uv = find_uv()
    *first, last = uv_commands(args)
    for command in first:
        code = subprocess.call([uv, *command])
        if code:
            return code
    if os.name == "posix":
        os.execv(uv, [uv, *last])  # uv becomes this process: signals reach it (and it forwards them)
    return subprocess.call([uv, *last])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

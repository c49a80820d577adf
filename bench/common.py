"""What every scenario shares: statistics, formatting, machine facts, tokens, servers, reports."""

from __future__ import annotations

import asyncio
import math
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from string import Template
from typing import Any

import httpx

from edge.tokens import TokenVerifier
from settings import DEV_SECRET
from tests.server import ServerUrl, running_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TEMPLATES = ROOT / "bench" / "templates"
PACKAGES = ("strawberry-graphql", "starlette", "uvicorn", "uvloop", "httptools", "sqlalchemy", "aiosqlite")
STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# --- statistics -------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return float(ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1])


def summarize(latencies: list[float], seconds: float) -> dict[str, float]:
    n = len(latencies)
    return {
        "n": float(n),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "mean": sum(latencies) / n if n else math.nan,
        "max": float(max(latencies)) if n else math.nan,
        "rps": n / seconds if seconds else math.nan,
    }


def weighted(pairs: list[tuple[float | None, int]]) -> float:
    known = [(v, n) for v, n in pairs if v is not None]
    total = sum(n for _, n in known)
    return sum(v * n for v, n in known) / total if total else math.nan


# --- formatting -------------------------------------------------------------------------------


def ms(us: float) -> str:
    value = us / 1000
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def x(ratio: float) -> str:
    if math.isnan(ratio):
        return "n/a"
    if ratio >= 100:
        return f"{ratio:.0f}x"
    return f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


def rate(value: float) -> str:
    return f"{value:,.0f}"


def cpu(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.0f} µs"


def share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def met(ok: bool) -> str:
    return "met" if ok else "**NOT MET**"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def human(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    return f"{n // 1_000}k" if n >= 1_000 and n % 1_000 == 0 else str(n)


# --- the machine ------------------------------------------------------------------------------


def read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def field_of(path: str, prefix: str) -> str:
    return next((line.split(":", 1)[1].strip() for line in read(path).splitlines() if line.startswith(prefix)), "")


def loadavg() -> str:
    return " ".join(read("/proc/loadavg").split()[:3]) or "unknown"


def git_revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (with uncommitted changes)" if dirty else head


def version(name: str) -> str:
    try:
        return f"{name} {metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return f"{name} (absent)"


def describe(wait_quiet: float) -> dict[str, str]:
    """The machine table of every report; first waits (up to `wait_quiet` s) for the CPUs to quiet down."""
    waited = time.monotonic()
    busy = wait_for_quiet(wait_quiet)
    waited = time.monotonic() - waited
    memory = field_of("/proc/meminfo", "MemTotal:").split()
    return {
        "Date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "CPU": field_of("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "Cores (logical)": f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable by this process)",
        "RAM": f"{int(memory[0]) / 1024 / 1024:.1f} GiB" if memory else "unknown",
        "Load average at start": loadavg(),
        "CPU used by other processes at start": "unknown"
        if busy is None
        else f"{busy:.0%} of the cores (after waiting {waited:.0f} s for it to drop)",
        "OS": platform.platform(),
        "Python": f"{sys.version.split()[0]} ({platform.python_implementation()})",
        "SQLite": sqlite3.sqlite_version,
        "Packages": ", ".join(map(version, PACKAGES)),
        "Tally revision": git_revision(),
    }


def machine_table(machine: dict[str, str]) -> str:
    return table(["", ""], [[k, v] for k, v in machine.items()])


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if len(fields) > 12 else None


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_kib(pid: int) -> int:
    return int(field_of(f"/proc/{pid}/status", "VmRSS:").split()[0])


def busy_seconds() -> float | None:
    """CPU time (all cores) the machine spent not idle since boot, from /proc/stat."""
    try:
        fields = [int(v) for v in read("/proc/stat").splitlines()[0].split()[1:]]
    except (ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def foreign_share(wall: float, busy: float | None, ours: float) -> float | None:
    """Share of the machine's CPU capacity used by processes other than ours during `wall` seconds."""
    if busy is None or wall <= 0:
        return None
    return max(0.0, (busy - ours) / (wall * (os.cpu_count() or 1)))


def wait_for_quiet(max_wait: float) -> float | None:
    """Wait (up to max_wait seconds) until other processes leave the CPUs alone; the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        before = busy_seconds()
        time.sleep(2.0)
        after = busy_seconds()
        busy = None if before is None or after is None else (after - before) / (2.0 * (os.cpu_count() or 1))
        if busy is None or busy < 0.05 or time.monotonic() >= deadline:
            return busy
        log(f"the machine is {busy:.0%} busy with other processes; waiting for it to quiet down")
        time.sleep(3)


# --- tokens and servers -----------------------------------------------------------------------


def token(org_id: str | None, role: str = "admin", ttl: int = 7200) -> str:
    return TokenVerifier(DEV_SECRET).issue(org_id=org_id, role=role, subject="bench", ttl_seconds=ttl)


def uvicorn_flags() -> list[str]:
    loop = "uvloop" if _importable("uvloop") else "asyncio"
    http = "httptools" if _importable("httptools") else "h11"
    return ["--workers", "1", "--loop", loop, "--http", http, "--no-access-log", "--log-level", "warning"]


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without TALLY_* (nothing but the bench decides what is measured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    return {**env, "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), **extra}


@contextmanager
def app_servers(*specs: tuple[str, str, dict[str, str]]) -> Iterator[list[ServerUrl]]:
    """One uvicorn process per (name, bench.servers factory, BENCH_* env), side by side."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        command = ["{python}", "-m", "uvicorn", "", "--factory", "--host", "127.0.0.1", "--port", "{port}"]
        yield [
            stack.enter_context(
                running_server(
                    {},
                    timeout=90,
                    command=[*command[:3], f"bench.servers:{factory}", *command[4:], *uvicorn_flags()],
                    base_env=child_env(**env),
                    log_path=RESULTS / f"server-{name}.log",
                )
            )
            for name, factory, env in specs
        ]


def live_metrics(base: str) -> dict[str, float]:
    """A server's tally_live_* figures from its /metrics (Prometheus text), named without prefix and _total."""
    figures = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("tally_live_") and "{" not in name and not name.endswith("_created"):
            figures[name.removeprefix("tally_live_").removesuffix("_total")] = float(value)
    return figures


# --- results and reports ----------------------------------------------------------------------


def render(name: str, fields: dict[str, Any]) -> str:
    """bench/templates/<name>.md with its $fields filled in."""
    return Template((TEMPLATES / f"{name}.md").read_text()).substitute(fields)


def keep_analysis(text: str, target: Path) -> str:
    """A hand-written `## Analysis` section of the report being replaced stays at its end."""
    kept = target.read_text().partition("\n## Analysis") if target.exists() else ("", "", "")
    return text + kept[1] + kept[2] if kept[1] else text

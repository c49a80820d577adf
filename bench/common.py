"""What every scenario shares: statistics, machine facts, tokens, servers, and the report renderer."""

from __future__ import annotations

import math
import os
import platform
import re
import resource
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import uvloop

from edge.tokens import TokenVerifier
from settings import DEV_SECRET
from tests.server import ServerUrl, running_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PACKAGES = ("strawberry-graphql", "starlette", "uvicorn", "uvloop", "httptools", "sqlalchemy", "aiosqlite")
UVICORN_FLAGS = "--workers 1 --loop uvloop --http httptools --no-access-log --log-level warning"
CORES = os.cpu_count() or 1
TICK = os.sysconf("SC_CLK_TCK")
STARTED = time.monotonic()
run_async = uvloop.run


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return float(ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]) if ordered else math.nan


def summarize(values: list[float], seconds: float = 0.0) -> dict[str, float]:
    n = len(values)
    return {
        "n": n,
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": sum(values) / n if n else math.nan,
        "max": float(max(values)) if n else math.nan,
        "rps": n / seconds if seconds else math.nan,
    }


def human(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    return f"{n // 1_000}k" if n >= 1_000 and n % 1_000 == 0 else str(n)


def read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def field_of(path: str, prefix: str) -> str:
    return next((line.split(":", 1)[1].strip() for line in read(path).splitlines() if line.startswith(prefix)), "")


def loadavg() -> str:
    return " ".join(read("/proc/loadavg").split()[:3]) or "unknown"


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / TICK if len(fields) > 12 else math.nan


def self_cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def busy_seconds() -> float:
    """CPU time (all cores) the machine spent not idle since boot, from /proc/stat."""
    fields = [int(v) for v in read("/proc/stat").split("\n", 1)[0].split()[1:9]]
    return (sum(fields[:3]) + sum(fields[5:8])) / TICK if len(fields) == 8 else math.nan


def foreign_meter(ours: Callable[[], float]) -> Callable[[], float | None]:
    """When called, the share of the CPUs other processes than `ours()` (CPU seconds so far) used since now."""
    busy, own, wall = busy_seconds(), ours(), time.monotonic()

    def share() -> float | None:
        value = (busy_seconds() - busy - (ours() - own)) / ((time.monotonic() - wall) * CORES)
        return None if math.isnan(value) else max(0.0, value)

    return share


def wait_for_quiet(max_wait: float) -> float | None:
    """Wait (up to max_wait seconds) until other processes leave the CPUs alone; the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        meter = foreign_meter(lambda: 0.0)
        time.sleep(2.0)
        busy = meter()
        if busy is None or busy < 0.05 or time.monotonic() >= deadline:
            return busy
        log(f"the machine is {busy:.0%} busy with other processes; waiting for it to quiet down")
        time.sleep(3)


def describe(wait_quiet: float) -> dict[str, str]:
    """The machine table of every report; first waits (up to `wait_quiet` s) for the CPUs to quiet down."""
    since, busy = time.monotonic(), wait_for_quiet(wait_quiet)
    waited = f"after waiting {time.monotonic() - since:.0f} s for it to drop"
    memory = field_of("/proc/meminfo", "MemTotal:").split()
    installed = {d.metadata["Name"].lower(): d.version for d in metadata.distributions()}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return {
        "Date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "CPU": field_of("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "Cores (logical)": f"{CORES} ({len(os.sched_getaffinity(0))} usable by this process)",
        "RAM": f"{int(memory[0]) / 1024 / 1024:.1f} GiB" if memory else "unknown",
        "Load average at start": loadavg(),
        "CPU used by other processes at start": "unknown" if busy is None else f"{busy:.0%} of the cores ({waited})",
        "OS": platform.platform(),
        "Python": f"{sys.version.split()[0]} ({platform.python_implementation()})",
        "SQLite": sqlite3.sqlite_version,
        "Packages": ", ".join(f"{name} {installed.get(name, '(absent)')}" for name in PACKAGES),
        "Tally revision": f"{git('rev-parse', '--short', 'HEAD') or 'unknown'}{dirty}",
    }


def token(org_id: str | None, role: str = "admin") -> str:
    return TokenVerifier(DEV_SECRET).issue(org_id=org_id, role=role, subject="bench", ttl_seconds=7200)


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without TALLY_* (nothing but the bench decides what is measured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    return {**env, "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), **extra}


@contextmanager
def app_servers(*specs: tuple[str, str, dict[str, str]]) -> Iterator[list[ServerUrl]]:
    """One uvicorn process per (name, bench.servers factory, BENCH_* env), side by side."""
    uvicorn = ["{python}", "-m", "uvicorn", "--factory", "--host", "127.0.0.1", "--port", "{port}"]
    with ExitStack() as stack:
        servers = []
        for name, factory, env in specs:
            command = [*uvicorn, f"bench.servers:{factory}", *UVICORN_FLAGS.split()]
            log_path = RESULTS / f"server-{name}.log"
            server = running_server({}, timeout=90, command=command, base_env=child_env(**env), log_path=log_path)
            servers.append(stack.enter_context(server))
        yield servers


def ms(us: float) -> str:
    value = us / 1000
    if math.isnan(value):
        return "n/a"
    return f"{value:.{0 if value >= 100 else 1 if value >= 10 else 2 if value >= 1 else 3}f}"


def x(ratio: float | None) -> str:
    if ratio is None:
        return "baseline"
    if math.isnan(ratio) or ratio <= 0:  # a ratio of a negative time (an event that overtook its response)
        return "n/a"
    return f"{ratio:.{0 if ratio >= 100 else 1 if ratio >= 10 else 2}f}x"


FORMATS: dict[str, Callable[[Any], str]] = {
    "ms": ms,
    "x": x,
    "rate": lambda v: f"{v:,.0f}",
    "cpu": lambda v: "n/a" if v is None or math.isnan(v) else f"{v:,.0f} µs",
    "share": lambda v: "n/a" if v is None else f"{v:.0%}",
    "met": lambda ok: "met" if ok else "**NOT MET**",
    "yes": lambda ok: "yes" if ok else "**NO**",
    "kv": lambda d: ", ".join(f"{k} ({v:,})" for k, v in d.items()),
    "opt": lambda v: "" if v is None else str(v),
    "list": lambda v: ", ".join(v) or "none",
    "lines": "\n".join,
    "codes": lambda v: "\n".join(f"- `{line}`" for line in v),
}
BLOCK = re.compile(r"^\{\{ each (\S+) \}\}\n(.*?)^\{\{ end \}\}\n", re.M | re.S)
LINE = re.compile(r"^\{\{ each (\S+) \}\}(.*\n)", re.M)
PLACEHOLDER = re.compile(r"\{\{\s*([^|}]*?)\s*(?:\|\s*([^}]*?)\s*)?\}\}")
NAME = re.compile(r"'[^']*'|(?<![\w.])(\.?[A-Za-z_]\w*(?:[.-]\w+)*)")  # a quoted string, or a path
FUNCTIONS = {"abs": abs, "max": max}


def lookup(data: Any, path: str) -> Any:
    for part in filter(None, path.split(".")):
        data = None if data is None else data[int(part)] if isinstance(data, list) else data[part]
    return data


def evaluate(expression: str, data: Any, item: Any) -> Any:
    """A path (`.path`: of the current item), or arithmetic and comparisons of paths and numbers:
    `a.p50 / b.p50`; nan where it divides by zero, None (a baseline) where a path is None."""
    values: dict[str, Any] = {}

    def name(m: re.Match[str]) -> str:
        if m[1] is None or m[1] in FUNCTIONS:
            return m[0]
        values[f"_{len(values)}"] = lookup(item if m[1].startswith(".") else data, m[1])
        return f"_{len(values) - 1}"

    if " " not in expression:
        return lookup(item if expression.startswith(".") else data, expression)
    try:
        return eval(NAME.sub(name, expression), {"__builtins__": FUNCTIONS}, values)
    except ZeroDivisionError:
        return math.nan
    except TypeError:
        return None


def render(text: str, data: dict[str, Any]) -> str:
    """`{{ expression | format }}` from `data` (format: a FORMATS name, a format spec, or `?text`: that
    text if the expression is true). A line `{{ each path }}...` repeats the rest of the line per item
    of that list, a block from a line `{{ each path }}` to a line `{{ end }}` the block; `{{ .key }}`
    names the item's value."""

    def fill(chunk: str, item: Any = None) -> str:
        def one(m: re.Match[str]) -> str:
            value, spec = evaluate(m[1], data, item), m[2] or ""
            if spec.startswith("?"):  # the text after "?" if the value is true
                return spec[1:] if value else ""
            return FORMATS[spec](value) if spec in FORMATS else format(value, spec)

        return PLACEHOLDER.sub(one, chunk)

    def each(m: re.Match[str]) -> str:
        return "".join(fill(m[2], item) for item in lookup(data, m[1]))

    return fill(LINE.sub(each, BLOCK.sub(each, text)))

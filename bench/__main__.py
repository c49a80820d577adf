"""Tally benchmarks: `uv run python -m bench [--only sqlite,live,recalc,postgres] [--quick] [--render-only]`.

Each scenario measures, saves its figures as JSON (bench/results/<scenario>-<profile>.json)
and its report is rendered from bench/templates/<scenario>.md: docs/benchmarks*.md for a
full run, bench/results/quick/ for a quick one (or --out DIR).
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, describe, keep_analysis, loadavg, log, machine_table, render, uvicorn_flags

SCENARIOS = {
    "sqlite": "benchmarks.md",
    "live": "benchmarks-live.md",
    "recalc": "benchmarks-recalc.md",
    "postgres": "benchmarks-postgres.md",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated scenarios (default all: {','.join(SCENARIOS)})")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, short windows")
    parser.add_argument("--out", type=Path, help="report directory (default docs/; quick: bench/results/quick/)")
    parser.add_argument("--wait-quiet", type=float, help="seconds to wait for other processes to leave the CPUs (60; quick 0)")
    parser.add_argument("--render-only", action="store_true", help="measure nothing: re-render from the saved JSON")
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL, no database")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := set(chosen) - set(SCENARIOS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop the servers, drop databases
    profile = "quick" if args.quick else "full"
    out_dir = args.out or (RESULTS / "quick" if args.quick else ROOT / "docs")
    ok = True
    for name in chosen:
        scenario = importlib.import_module(f"bench.{name}")
        saved = RESULTS / f"{name}-{profile}.json"
        if not args.render_only:
            started = time.monotonic()
            machine = describe(0.0 if args.quick else args.wait_quiet if args.wait_quiet is not None else 60.0)
            log(f"{name} ({profile}) on {machine['CPU']}, {machine['Cores (logical)']}")
            data = scenario.run(scenario.PROFILES[profile], **({"server": args.server} if name == "postgres" else {}))
            machine.update({"Load average at end": loadavg(), **data.pop("machine", {})})
            data["run"] = {"machine": machine, "seconds": time.monotonic() - started, "server_flags": " ".join(uvicorn_flags())}
            RESULTS.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(data, default=str))
        data = json.loads(saved.read_text())
        ok = ok and data.get("ok", True) is not False
        fields = scenario.fields(data)
        run = data["run"]
        fields.update(machine=machine_table(run["machine"]), minutes=f"{run['seconds'] / 60:.1f}", seconds=f"{run['seconds']:.0f}", server_flags=run["server_flags"])
        target = out_dir / SCENARIOS[name]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(keep_analysis(render(name, fields), target))
        log(f"wrote {target} (figures: {saved})")
    return 0 if ok else 1


sys.exit(main())

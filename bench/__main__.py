"""Tally benchmarks: `uv run python -m bench [--only sqlite,live,recalc,postgres,production,money,then_and_now] [--quick] [--render-only]`.

Each scenario saves its figures as bench/results/<scenario>-<profile>.json, rendered through
bench/templates/<scenario>.md into docs/ (a quick run: bench/results/quick/).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import signal
import sys
import time

from bench.common import RESULTS, ROOT, TEMPLATES, UVICORN_FLAGS, describe, loadavg, log

SCENARIOS = ("sqlite", "live", "recalc", "postgres", "production", "money", "then_and_now")
REPORTS = {
    name: "benchmarks.md" if name == "sqlite" else f"benchmarks-{name.replace('_', '-')}.md" for name in SCENARIOS
}
ON_POSTGRES = ("postgres", "production", "money", "then_and_now")  # each takes --server
OVER_WRK = ("sqlite", *ON_POSTGRES)  # each drives its servers with wrk

parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
parser.add_argument("--only", default=",".join(REPORTS), help="comma-separated scenarios")
parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, short windows")
parser.add_argument("--render-only", action="store_true", help="re-render the reports from the saved JSON")
parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL, no database")
args = parser.parse_args()
if unknown := set(chosen := args.only.split(",")) - set(REPORTS):
    parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop the servers, drop databases
if not args.render_only and set(OVER_WRK) & set(chosen) and not shutil.which("wrk"):
    sys.exit(f"bench: the {', '.join(OVER_WRK)} scenarios need wrk as their HTTP client: apt-get install wrk")
profile = "quick" if args.quick else "full"
RESULTS.mkdir(parents=True, exist_ok=True)
ok = True
for name in chosen:
    scenario = importlib.import_module(f"bench.{name}")
    saved = RESULTS / f"{name}-{profile}.json"
    if not args.render_only:
        started = time.monotonic()
        machine = describe(0.0 if args.quick else 60.0)
        log(f"{name} ({profile}) on {machine['CPU']}, {machine['Cores (logical)']}")
        server = {"server": args.server} if name in ON_POSTGRES else {}
        data = scenario.run(scenario.PROFILES[profile], **server)
        machine.update({"Load average at end": loadavg(), **data.pop("machine", {})})
        run = {"machine": list(machine.items()), "seconds": time.monotonic() - started, "server_flags": UVICORN_FLAGS}
        data["run"] = run
        saved.write_text(json.dumps(data, default=str))
    data = json.loads(saved.read_text())
    ok = ok and data.get("ok", True)
    target = (RESULTS / "quick" if args.quick else ROOT / "docs") / REPORTS[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    kept = target.read_text().partition("\n## Analysis")[1:] if target.exists() else ()  # a hand-written section
    target.write_text(TEMPLATES.get_template(f"{name}.md").render(data) + "".join(kept))
    log(f"wrote {target} (figures: {saved})")
sys.exit(0 if ok else 1)

"""Where a Beam DirectRunner job's wall time goes: per fused stage, its wall time, the runner's CPU, each worker's
busy time (idle = a worker waiting at the stage barrier), plus start-up, shut-down and GC per process.

    .venv/bin/python bench/beam_timeline.py -- .venv/bin/python bench/curate_throughput.py \\
        --corpus /tmp/c12k --measure pipeline --workers 2 --work /tmp/bw

Runs the command with bench/timeline_hook on PYTHONPATH (its sitecustomize wraps the FnApiRunner's stage loop and
the SDK worker's bundle loop in every process the command starts), then prints the table. Times are seconds from
the runner process's start.
"""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict


def timeline(trace_dir: str) -> None:
    procs = [json.load(open(path)) for path in glob.glob(os.path.join(trace_dir, "*.json"))]
    runner = next(p for p in procs if any(e[0] == "stage" for e in p["events"]))
    workers = [p for p in procs if p is not runner and any(e[0] == "bundle" for e in p["events"])]
    t0 = runner["t0"]
    stages = sorted((e for e in runner["events"] if e[0] == "stage"), key=lambda e: e[1])
    print(f"runner: exit at {runner['t_exit'] - t0:.1f}, CPU {runner['cpu']:.1f} s, GC {runner['gc']['seconds']:.2f} s")
    for w in workers:
        bundles = [e for e in w["events"] if e[0] == "bundle"]
        print(f"worker {w['pid']}: started at {w['t0'] - t0:.1f}, first bundle at {min(e[1] for e in bundles) - t0:.1f}, "
              f"exit at {w['t_exit'] - t0:.1f}; CPU {w['cpu']:.1f} s, of it in bundles {sum(e[3] for e in bundles):.1f} s; "
              f"GC {w['gc']['seconds']:.2f} s {w['gc']['collections']}")
    for e in sorted((e for e in runner["events"] if e[0] == "call"), key=lambda e: e[1]):
        print(f"{e[4][0]}: {e[1] - t0:.2f} .. {e[2] - t0:.2f} ({e[2] - e[1]:.2f} s)")
    print("\n| start | wall s | runner CPU s | workers idle s | worker busy s | stage (first transform) |\n|---|---|---|---|---|---|")
    idle_total = 0.0
    for stage in stages:
        busy = defaultdict(float)
        for w in workers:
            for e in w["events"]:
                if e[0] == "bundle" and e[1] >= stage[1] - 0.01 and e[2] <= stage[2] + 0.01:
                    busy[w["pid"]] += e[2] - e[1]
        wall = stage[2] - stage[1]
        idle = sum(wall - busy[w["pid"]] for w in workers)
        idle_total += idle
        per_worker = " / ".join(f"{busy[w['pid']]:.2f}" for w in workers)
        print(f"| {stage[1] - t0:.1f} | {wall:.2f} | {stage[3]:.2f} | {idle:.2f} | {per_worker} | {re.sub(r'ref_AppliedPTransform_|[()]', '', stage[4][0])[:70]} |")
    print(f"\nstages: {len(stages)}, their wall {sum(s[2] - s[1] for s in stages):.1f} s, "
          f"workers idle inside them {idle_total:.1f} s (worker-seconds)")


def main() -> None:
    if "--" not in sys.argv:
        sys.exit(__doc__)
    command = sys.argv[sys.argv.index("--") + 1:]
    hook = os.path.join(os.path.dirname(os.path.abspath(__file__)), "timeline_hook")
    with tempfile.TemporaryDirectory(prefix="beam-timeline-") as trace_dir:
        env = {**os.environ, "BEAMTIMELINE_DIR": trace_dir,
               "PYTHONPATH": os.pathsep.join(filter(None, [hook, os.environ.get("PYTHONPATH", "")]))}
        subprocess.run(command, env=env, check=True)
        timeline(trace_dir)


if __name__ == "__main__":
    main()

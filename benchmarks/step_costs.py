"""The cost model of Chapter 6's equal-modelled-time race, measured with nothing else on the machine:
seconds per training step of each equal-time arm (its scoring passes taken out) and, for each arm
that scores, seconds per scored sample from its own selection clock.

    .venv/bin/python benchmarks/step_costs.py --scale cpu --out benchmarks/results/step-costs-cpu.json

The arms are those of ``python -m ismod suite equal_time`` at ``--scale`` (seed 0). Run it alone: a
busy machine inflates every number (what the cost model is for). ``ismod.suites.MODELLED_STEP_COSTS``
holds its figures for ``ismod.suites.chapter6_modelled``; a test checks they agree with the saved file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
from pathlib import Path

import torch

from ismod.bench import step_costs
from ismod.suites import equal_time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--scale", default="cpu", choices=["smoke", "cpu"])
parser.add_argument("--steps", type=int, default=30, help="k: runs of k and 2k steps per arm")
parser.add_argument("--rounds", type=int, default=2)
parser.add_argument("--out", required=True)
args = parser.parse_args()

arms = {label: configs[0] for label, configs in equal_time(args.scale).items()}
# the τ switches score nothing before they switch; once switched they score presamples as the
# forced switch does from its first step
score_like = {
    "upper bound, τ switch": "upper bound, always",
    "loss, τ switch": "upper bound, always",
}
costs = step_costs(
    arms,
    score_like=score_like,
    steps=args.steps,
    rounds=args.rounds,
    data_root=os.environ.get("ISMOD_DATA"),
)
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
costs["provenance"] = {
    "command": f"python benchmarks/step_costs.py --scale {args.scale} --steps {args.steps} "
    f"--rounds {args.rounds} --out {args.out}",
    "git_commit": commit,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "torch_version": torch.__version__,
    "cores": os.cpu_count(),
}
Path(args.out).write_text(json.dumps(costs, indent=1, ensure_ascii=False) + "\n")
print(
    json.dumps(
        {k: costs[k] for k in ("score_seconds", "step_seconds", "scored_per_step")},
        indent=1,
        ensure_ascii=False,
    )
)

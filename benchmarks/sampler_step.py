"""Per-step cost of importance sampling: draw 128 indices with weights, then update their 128 scores.

    .venv/bin/python benchmarks/sampler_step.py [--sizes 1000 50000 1000000 10000000] \
        [--json out.json] [--markdown out.md]

Compares ismod's sum-tree sampler with torchrl's compiled C++ sum tree (when torchrl is installed: it
is a benchmark-only peer, ``pip install torchrl``), WeightedRandomSampler rebuilt each step,
torch.multinomial on the full vector and numpy's Generator.choice, in one run; prints medians and
ratios to ismod. ``--markdown`` writes the table with its provenance (date, command, commit, machine).
"""

import argparse
import datetime
import json
import subprocess
import sys
import time

from ismod.bench import format_table, machine, sampler_step_costs

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 50_000, 1_000_000, 10_000_000])
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--repeats", type=int, default=20)
parser.add_argument("--json", help="also write the records here")
parser.add_argument("--markdown", help="also write the table with its provenance here")
args = parser.parse_args()


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain", "ismod") else "")


start = time.time()
rows = sampler_step_costs(args.sizes, batch_size=args.batch_size, repeats=args.repeats)
table = format_table(rows)
print(f"machine: {machine()}")
print(table)
print(f"(total {time.time() - start:.0f} s)")
if args.json:
    with open(args.json, "w") as f:
        json.dump({"machine": machine(), "commit": commit(), "rows": rows}, f, indent=1)
if args.markdown:
    command = " ".join(["python", *sys.argv])
    try:
        import torchrl

        peer = f"torchrl {torchrl.__version__}"
    except ImportError:
        peer = "torchrl not installed (its rows are absent)"
    with open(args.markdown, "w") as f:
        f.write(
            f"# Sampler step cost, {datetime.date.today().isoformat()}\n\n"
            f"Command: `{command}` at commit {commit()}.\n"
            f"Machine: {machine()}; {peer}. Median µs per step (draw {args.batch_size} indices with "
            f"weights 1/(Np), then update their {args.batch_size} scores), candidates one after "
            "the other in one process; ratios to ismod.\n\n" + table + "\n"
        )

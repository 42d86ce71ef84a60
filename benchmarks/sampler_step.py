"""Per-step cost of importance sampling: draw 128 indices with weights, then update their 128 scores.

    .venv/bin/python benchmarks/sampler_step.py [--sizes 50000 1000000 10000000 30000000] [--json out.json]

Compares ismod's sum-tree sampler with WeightedRandomSampler rebuilt each step, torch.multinomial on
the full vector and numpy's Generator.choice, in one run; prints medians and ratios to ismod.
"""

import argparse
import json
import time

from ismod.bench import format_table, machine, sampler_step_costs

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument(
    "--sizes", type=int, nargs="+", default=[50_000, 1_000_000, 10_000_000, 30_000_000]
)
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--repeats", type=int, default=20)
parser.add_argument("--json", help="also write the records here")
args = parser.parse_args()

start = time.time()
rows = sampler_step_costs(args.sizes, batch_size=args.batch_size, repeats=args.repeats)
print(f"machine: {machine()}")
print(format_table(rows))
print(f"(total {time.time() - start:.0f} s)")
if args.json:
    with open(args.json, "w") as f:
        json.dump({"machine": machine(), "rows": rows}, f, indent=1)

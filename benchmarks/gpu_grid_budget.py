"""Predicted GPU time of every chapter's ``"gpu"`` grid, from the runs already saved on a GPU.

    .venv/bin/python benchmarks/gpu_grid_budget.py [--results book/results/gpu]

A saved run counts its own measured seconds (training + evaluation + probes). A missing run is
priced from the saved uniform runs of the fast recipe (median seconds per epoch, evaluation
included) times the cost model's scoring factor for its strategy (selective backprop, the τ switch),
plus, for probed runs, the saved probe runs' seconds per probed sample;
seconds budgets count as their budget plus the median evaluation overhead. Prints a table per suite
and the total, in minutes of the GPU the saved runs were made on.
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ismod import runner, suites  # noqa: E402
from ismod.experiments import config_hash, load_saved  # noqa: E402


def seconds_of(result) -> float:
    return (
        result.final["train_time"]
        + result.timing.get("evaluation", 0.0)
        + result.timing.get("probe", 0.0)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="book/results/gpu")
    args = parser.parse_args()
    grids = {name: make("gpu") for name, make in suites.SUITES.items()}
    uniform = [
        r
        for cs in grids["chapter7"].values()
        for c in cs
        if c.strategy == "prediction_subset"
        and c.strategy_options.get("kind") == "uniform"
        and (r := load_saved(c, args.results))
    ]
    per_sample = statistics.median(
        seconds_of(r) / (r.final["epochs"] * r.provenance["train_size"]) for r in uniform
    )
    timed = [
        r for cs in grids["chapter5"].values() for c in cs if (r := load_saved(c, args.results))
    ]
    overhead = statistics.median(seconds_of(r) - r.config["budget_amount"] for r in timed)
    probed = [
        r.timing["probe"] / r.config["probe_size"]
        for cs in grids["chapter4"].values()
        for c in cs
        if (r := load_saved(c, args.results))
    ]  # probe seconds per probed sample, all points
    print(
        f"priced from {len(uniform)} saved uniform runs: {per_sample * 50_000:.3f} s per epoch; seconds budgets "
        f"+{overhead:.2f} s each; device {uniform[0].provenance['device']}"
    )
    total = 0.0
    print("| grid | runs | saved | seconds (saved measured + missing predicted) |")
    print("|---|---:|---:|---:|")
    counted: set[str] = set()
    for name, suite in grids.items():
        seconds, saved, runs = 0.0, 0, 0
        for configs in suite.values():
            for c in configs:
                key = config_hash(c)
                if key in counted:  # chapter 6 reuses chapter 5's runs
                    continue
                counted.add(key)
                runs += 1
                r = load_saved(c, args.results)
                if r is not None:
                    saved += 1
                    seconds += seconds_of(r)
                else:
                    # t_b / t_f = 1.45, measured on the H200 for the fast network at b = 1024
                    seconds += runner.seconds_from_rate(
                        c,
                        per_sample,
                        backward_ratio=1.45,
                        overhead_s=overhead if c.budget == "seconds" else 0.0,
                    )
                    if c.probe_size and probed:
                        seconds += statistics.median(probed) * c.probe_size
        total += seconds
        print(f"| {name} | {runs} | {saved} | {seconds:.0f} |")
    print(f"| all | | | {total:.0f} s = {total / 60:.1f} min |")


if __name__ == "__main__":
    main()

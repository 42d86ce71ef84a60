"""Time to accuracy on this CPU: the cpu scale's small CNN against the fast recipe on a narrow fast network.

    ISMOD_DATA=... .venv/bin/python benchmarks/cpu_time_to_accuracy.py [--rounds 1] [--epochs 5]

Both train on all of CIFAR-10 (the data in $ISMOD_DATA), alternating round by round so that a busy
machine slows both. The reference is ``cifar10-small-uniform`` (the small CNN, 4 epochs); the
candidate is ``cifar10-fast-uniform`` (airbench94's settings: whitening, lookahead, label smoothing,
test-time augmentation) on ``fast_cnn_narrow`` (widths 32/64/128) at batch 512 for ``--epochs``.
Prints each run's training seconds and test accuracy.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ismod.bench import machine  # noqa: E402
from ismod.experiments import get_config, run  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--rounds", type=int, default=1)
parser.add_argument("--epochs", type=float, default=5)
parser.add_argument("--json", help="also write the records here")
args = parser.parse_args()

candidates = {
    "small CNN, cpu recipe (cifar10-small-uniform)": get_config("cifar10-small-uniform"),
    f"narrow fast CNN, fast recipe, batch 512, {args.epochs:g} epochs": get_config(
        "cifar10-fast-cpu", budget_amount=args.epochs, evaluations=1
    ),
}
rows = []
for k in range(args.rounds):
    for label, config in candidates.items():
        r = run(config.replace(seed=k), progress=False, scale="cpu")
        rows.append(
            {
                "run": label,
                "seed": k,
                "train_seconds": r.final["train_time"],
                "test_accuracy": r.final["test_accuracy"],
                "epochs": r.final["epochs"],
            }
        )
        print(
            f"{label}, seed {k}: {r.final['test_accuracy']:.2%} in {r.final['train_time']:.0f} s",
            flush=True,
        )
print(f"machine: {machine()}; data: {r.provenance['data_source']}")
print("| run | seed | epochs | training s | test accuracy |\n|---|---:|---:|---:|---:|")
for row in rows:
    print(
        f"| {row['run']} | {row['seed']} | {row['epochs']:.1f} | {row['train_seconds']:.0f} | {row['test_accuracy']:.2%} |"
    )
if args.json:
    Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))

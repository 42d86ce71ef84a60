"""What distributed importance sampling adds to a training step: the collectives, against the step.

Two local processes (gloo, loopback, one thread each) time the all-gather of the global batch's losses
and logits and the gradient all-reduce that every distributed ``fit`` step makes, and an all-gather of
N = 50,000 scores (what keeping every score in sync each step would cost — ``ismod`` does not need to,
since every rank updates its copy from the gathered batch). Ratios are to one rank's forward and backward
pass of its slice of the batch.

    .venv/bin/python benchmarks/collective_cost.py [--nprocs 2] [--num-scores 50000] [--model small_cnn]
"""

import argparse

from ismod.bench import collective_costs, machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--num-scores", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    rows = collective_costs(
        nprocs=args.nprocs,
        num_scores=args.num_scores,
        batch_size=args.batch_size,
        model=args.model,
        repeats=args.repeats,
    )
    step = next(v for k, v in rows.items() if k.startswith("forward + backward"))
    print(
        f"{machine()}; {args.nprocs} gloo processes on loopback, global batch {args.batch_size}, model {args.model}"
    )
    print(f"| {'what':58} | median µs | / one rank's step |")
    print(f"|{'-' * 60}|-----------|-------------------|")
    for name, us in rows.items():
        print(f"| {name:58} | {us:9.0f} | {us / step:17.3f} |")


if __name__ == "__main__":  # spawned workers import this file; only the parent runs the benchmark
    main()

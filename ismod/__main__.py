"""Command line: ``python -m ismod run NAME [--set key=value ...] [--out PATH] [--resume]``,
``python -m ismod suite NAME --scale SCALE --out DIR``, ``python -m ismod list``.

``run`` and ``suite`` also run under ``torchrun --nproc_per_node=K -m ismod ...``: each process joins
the group (gloo on CPU, nccl on GPUs), ``batch_size`` is the global batch, and rank 0 writes."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from .distributed import init_from_env
from .experiments import CONFIGS, Config, config_hash, get_config, run, run_or_load
from .suites import SUITES
from .runner import estimate_seconds, missing_runs


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` → (key, value), the value read as a Python literal when it is one (else a string)."""
    if "=" not in text:
        raise ValueError(f"--set takes key=value, got {text!r}")
    key, raw = text.split("=", 1)
    known = {f.name for f in dataclasses.fields(Config)}
    if key not in known:
        raise ValueError(f"--set: unknown config field {key!r}; fields: {sorted(known)}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if key == "milestones" and isinstance(value, list):
        value = tuple(value)
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ismod", description="ismod experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the named configs")
    run_p = sub.add_parser("run", help="run a named config")
    run_p.add_argument("name")
    run_p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    run_p.add_argument("--out", help="result JSON path (default results/NAME-HASH.json)")
    run_p.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint beside --out"
    )
    run_p.add_argument("--data", help="data directory (default $ISMOD_DATA)")
    run_p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    run_p.add_argument("--no-progress", action="store_true")
    run_p.add_argument(
        "--keep-checkpoint",
        action="store_true",
        help="keep the final checkpoint beside --out (by default it is removed once the result is saved)",
    )
    pages_p = sub.add_parser(
        "pages", help="per page of the book: saved runs, runs it would train, predicted minutes"
    )
    pages_p.add_argument("--scale", required=True, choices=["smoke", "cpu", "gpu"])
    pages_p.add_argument("--results", default="book/results", help="the folder holding <scale>/")
    pages_p.add_argument("--data", help="data directory (default $ISMOD_DATA)")
    suite_p = sub.add_parser(
        "suite", help="run (or reuse) every config of a chapter's experiment grid"
    )
    suite_p.add_argument("name", help="one of: " + ", ".join(SUITES))
    suite_p.add_argument("--scale", required=True, choices=["smoke", "cpu", "gpu"])
    suite_p.add_argument(
        "--out", required=True, help="results directory (saved results there are reused)"
    )
    suite_p.add_argument(
        "--only", action="append", default=[], help="run only arms whose label contains this"
    )
    suite_p.add_argument("--data", help="data directory (default $ISMOD_DATA)")
    suite_p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    suite_p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="refuse to start if the runs still missing are predicted to train longer than this",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        world = init_from_env()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rank0 = world is None or world.rank == 0
    if args.command == "suite":
        return _suite(args, rank0)
    if args.command == "pages":
        return _pages(args)
    if args.command == "list":
        for name, config in CONFIGS.items():
            print(f"{name:28} model={config.model} strategy={config.strategy} "
                  f"budget={config.budget_amount:g} {config.budget}")  # fmt: skip
        return 0
    return _run(args, rank0)


def _suite(args: argparse.Namespace, rank0: bool) -> int:
    """``suite``: train (or reuse) every config of a grid, seed by seed across arms."""
    if args.name not in SUITES:
        print(f"error: no suite named {args.name!r}; known: {sorted(SUITES)}", file=sys.stderr)
        return 2
    suite = SUITES[args.name](args.scale)
    if args.only:
        suite = {k: v for k, v in suite.items() if any(part in k for part in args.only)}
    missing = missing_runs(suite, args.out, args.data)
    if missing:
        minutes = estimate_seconds(missing, args.device) / 60
        if rank0:
            print(
                f"{len(missing)} runs to train, about {minutes:.1f} min predicted from measured step times",
                flush=True,
            )
        if args.max_minutes is not None and minutes > args.max_minutes:
            print(f"error: predicted {minutes:.0f} min exceeds --max-minutes {args.max_minutes:g}; nothing was run "
                  "(use --only to run part of the grid)", file=sys.stderr)  # fmt: skip
            return 2
    # seed by seed across arms, so that a slow spell on the machine hits every arm alike
    rounds = max((len(c) for c in suite.values()), default=0)
    for i in range(rounds):
        for label, configs in suite.items():
            if i >= len(configs):
                continue
            config = configs[i]
            start = time.perf_counter()
            result = run_or_load(config, args.out, scale=args.scale, data_root=args.data, device=args.device,
                                 progress=False)  # fmt: skip
            if rank0:
                print(
                    f"{label} seed {config.seed}: test accuracy {result.final['test_accuracy']:.4f}, "
                    f"{result.final['train_time']:.0f} s training ({time.perf_counter() - start:.0f} s now)",
                    flush=True,
                )
    return 0


def _pages(args: argparse.Namespace) -> int:
    """``pages``: per page of the book, the saved runs it reads and the runs it would train."""
    from .runner import page_costs

    costs = page_costs(args.scale, Path(args.results) / args.scale, data_root=args.data)
    print(f"predicted training per page at {args.scale!r} scale (runs already saved are read):")
    for page, c in costs.items():
        train = (
            f"trains {c['missing']} runs, about {c['seconds'] / 60:.1f} min"
            if c["missing"]
            else "trains nothing"
        )
        print(f"  {page:20} reads {c['saved']:3d} saved runs, {train}")  # fmt: skip
    return 0


def _run(args: argparse.Namespace, rank0: bool) -> int:
    """``run``: one named config, with overrides, saved as JSON (its checkpoint beside it)."""
    try:
        config = get_config(args.name, **dict(parse_override(s) for s in args.set))
        config.validate()
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = (
        Path(args.out)
        if args.out
        else Path("results") / f"{config.name}-{config_hash(config)[:12]}.json"
    )
    checkpoint = out.with_suffix(".ckpt.pt")
    result = run(config, device=args.device, data_root=args.data, checkpoint=checkpoint, resume=args.resume,
                 progress=not args.no_progress and rank0)  # fmt: skip
    if not rank0:
        return 0
    result.save(out)
    if not args.keep_checkpoint:
        checkpoint.unlink(missing_ok=True)  # the saved result supersedes it
    final = result.final
    print(
        f"{config.name}: test accuracy {final['test_accuracy']:.4f} after {final['epochs']:.2f} epochs, "
        f"{final['train_time']:.1f} s training ({final['images_per_second']:.0f} images/s); saved {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

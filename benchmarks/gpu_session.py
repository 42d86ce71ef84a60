"""One lent-GPU session in one command: CUDA tests, pilots, benchmarks and the chapters' gpu grids.

    python3 benchmarks/gpu_session.py --out DIR --seconds 540 [--stages tests airbench pilots bench grids]
                                      [--grids chapter5 chapter6 chapter7 ...] [--data DATA_DIR]

Every stage writes what it measured to ``DIR/session.json`` and ``DIR/log.txt`` as it goes; runs are
saved one by one under ``DIR/results/gpu`` (through ``run_or_load``, so a second session skips what a
first one finished once those files are copied into ``book/results/gpu``). The grids are run seed by
seed across arms (round robin), so a deadline leaves whole seeds of every arm rather than whole arms,
and arms compared on time share the machine's drift. A run is started only if the time left exceeds
its estimate from the runs before it. Provenance: set ``ISMOD_GIT_COMMIT`` and ``ISMOD_COMMAND``.

The airbench stage runs airbench94 (Keller Jordan's public package, a benchmark-only extra, never a
dependency) on the same JPEG copy, alternating with the fast recipe's uniform run, and compares time
and accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ismod import bench, runner, suites  # noqa: E402
from ismod.experiments import Config, get_config, load_saved, run_or_load  # noqa: E402
from ismod.suites import fast_base  # noqa: E402

START = time.perf_counter()
STAGES = ("tests", "airbench", "pilots", "bench", "grids")
GRID_ORDER = (
    "chapter5",
    "chapter6",
    "chapter7",
    "chapter5_tau",
    "chapter4",
    "chapter3",
    "chapter3_report",
    "chapter3_variants",
    "chapter7_overfit_pilot",
    "chapter7_overfit",
    # Chapter 5's diagnosis (the τ switch's dissection, the critical batch, the rule's predictions)
    "chapter5_prediction_pilot",
    "chapter5_dissection",
    "chapter5_critical_batch",
    "chapter5_prediction",
)


class Session:
    def __init__(self, out: Path, seconds: float) -> None:
        out = out.resolve()  # the airbench stage changes directory
        self.out, self.deadline = out, START + seconds
        out.mkdir(parents=True, exist_ok=True)
        self.results = out / "results" / "gpu"
        self.results.mkdir(parents=True, exist_ok=True)
        self.record: dict[str, Any] = {"machine": bench.machine(), "commit": os.environ.get("ISMOD_GIT_COMMIT", ""),
                                       "command": os.environ.get("ISMOD_COMMAND", ""), "stages": {}}  # fmt: skip
        self.seconds_per_sample: list[float] = []  # wall seconds per trained sample of plain runs

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def log(self, *parts: Any) -> None:
        line = f"[{time.perf_counter() - START:6.1f}s] " + " ".join(str(p) for p in parts)
        print(line, flush=True)
        with open(self.out / "log.txt", "a") as f:
            f.write(line + "\n")

    def save(self, stage: str, value: Any) -> None:
        self.record["stages"][stage] = value
        (self.out / "session.json").write_text(json.dumps(self.record, indent=1, default=str))

    def estimate(self, config: Config) -> float:
        """Seconds a run should take, by the package's cost model at the rate of the runs before it,
        with a 30% margin and 3 s of start-up and evaluation."""
        rate = max(self.seconds_per_sample[-5:]) if self.seconds_per_sample else 2e-5
        return 1.3 * runner.seconds_from_rate(config, rate, backward_ratio=1.45) + 3

    def run(self, config: Config) -> Any:
        saved = load_saved(config, self.results)
        if saved is not None:
            return saved
        need = self.estimate(config)
        if need > self.left():
            self.log(f"skip {config.name}: needs ~{need:.0f} s, {self.left():.0f} s left")
            return None
        start = time.perf_counter()
        result = run_or_load(config, self.results, scale="gpu", progress=False)
        took = time.perf_counter() - start
        if config.budget == "epochs" and config.strategy in ("uniform", "prediction_subset"):
            self.seconds_per_sample.append(
                took / (result.final["epochs"] * result.provenance["train_size"])
            )
        self.log(f"{config.name}: {took:.1f} s wall, train {result.final['train_time']:.1f} s, "
                 f"test {result.final['test_accuracy']:.4f}, steps {result.final['steps']}")  # fmt: skip
        return result


def stage_tests(s: Session) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py",
           "tests/test_sampling.py"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30, min(240, s.left())))
    tail = (proc.stdout + proc.stderr)[-6000:]
    s.log("cuda tests exit", proc.returncode, "\n" + tail)
    s.save("tests", {"exit": proc.returncode, "tail": tail})


def _airbench_run(train94: Any) -> tuple[float, float]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        train94(verbose=True)
    last = [line for line in buf.getvalue().splitlines() if "eval" in line][-1]
    cells = [c.strip() for c in last.strip().strip("|").split("|")]
    return float(cells[5]), float(cells[6])  # tta_val_acc, total_time_seconds


def stage_airbench(s: Session, rounds: int) -> None:
    from ismod.data import load_cifar
    from ismod.experiments import run

    try:
        import airbench
    except ImportError as err:
        s.log("airbench not importable:", err)
        s.save("airbench", {"error": str(err)})
        return
    workdir = Path(tempfile.mkdtemp())
    (workdir / "cifar10").mkdir()
    for split in ("train", "test"):
        d = load_cifar("cifar10", split)
        torch.save({"images": d.images.permute(0, 2, 3, 1).contiguous(), "labels": d.labels, "classes": d.classes},
                   workdir / "cifar10" / f"{split}.pt")  # fmt: skip
    here = os.getcwd()
    ours_config = get_config("cifar10-fast-uniform", evaluations=1)
    rows: dict[str, list[tuple[float, float]]] = {"airbench94": [], "ismod fast recipe": []}
    try:
        os.chdir(workdir)
        _airbench_run(airbench.train94)  # warm-up (cuDNN autotuning, allocator)
        for k in range(rounds + 1):
            if s.left() < 30:
                break
            acc, secs = _airbench_run(airbench.train94)
            rows["airbench94"].append((acc, secs))
            r = run(ours_config.replace(seed=k), progress=False, scale="gpu")
            rows["ismod fast recipe"].append((r.final["test_accuracy"], r.final["train_time"]))
            s.log(f"round {k}: airbench94 {acc:.4f} in {secs:.2f} s; ours {r.final['test_accuracy']:.4f} in "
                  f"{r.final['train_time']:.2f} s")  # fmt: skip
    finally:
        os.chdir(here)
    s.save(
        "airbench",
        {"rounds": rows, "note": "round 0 of ours includes its warm-up; compare rounds 1+"},
    )


def stage_pilots(s: Session) -> None:
    out = {}
    for label, config in suites.gpu_pilots().items():
        r = s.run(config)
        if r is None:
            continue
        h = r.history[-1]
        row = {"test_accuracy": r.final["test_accuracy"], "train_time": r.final["train_time"], "steps": r.final["steps"],
               "train_eval_accuracy": h.get("train_eval_accuracy"), "train_loss": h.get("train_loss")}  # fmt: skip
        if "tau" in h:
            taus = [t for hh in r.history for _, t, _ in hh.get("tau_log", [])]
            row.update(
                tau_max=max(taus, default=None),
                tau_end=h["tau"],
                tau_threshold=h["tau_threshold"],
                t_forward=h.get("t_forward"),
                t_backward=h.get("t_backward"),
            )
        if "probe" in h:
            norms = torch.tensor(h["probe"]["grad_norm"])
            row["negligible_share"] = float((norms < 0.01 * norms.max()).float().mean())
        out[label] = row
        s.log(label, json.dumps(row))
        s.save("pilots", out)


def stage_bench(s: Session) -> None:
    out: dict[str, Any] = {}
    for name, batch in (("fast_cnn", 1024), ("resnet18", 512)):
        if s.left() < 40:
            break
        out[f"harness vs minimal, {name}"] = bench.harness_throughput(name, batch_size=batch, steps=40, rounds=3,
                                                                      device="cuda", amp=True)  # fmt: skip
        s.log(name, out[f"harness vs minimal, {name}"])
        s.save("bench", out)
    if s.left() > 40:
        out["DataLoader pipeline, resnet18"] = {"images_per_s": bench.dataloader_throughput(
            "resnet18", batch_size=512, steps=40, workers=min(12, os.cpu_count() or 4), device="cuda")}  # fmt: skip
        s.log("dataloader", out["DataLoader pipeline, resnet18"])
        s.save("bench", out)
    if s.left() > 40:
        rows = bench.sampler_step_costs(
            [50_000, 1_000_000, 10_000_000], batch_size=128, repeats=50, device="cuda"
        )
        out["sampler step, cuda"] = rows
        s.log("sampler\n" + bench.format_table(rows))
        s.save("bench", out)
    for name in ("fast_cnn", "resnet18"):
        if s.left() < 40:
            break
        out[f"scoring cost, {name}"] = bench.scoring_costs(name, batch_size=1024, loop_samples=64, chunk_size=64,
                                                           repeats=5, device="cuda")  # fmt: skip
        s.log(name, out[f"scoring cost, {name}"])
        s.save("bench", out)
    if s.left() > 20:
        # keyed by model and batch: the same model at two batch sizes must not overwrite itself
        out["forward/backward times"] = {f"{name}, b = {b}": bench.forward_backward_times(name, batch_size=b, repeats=20,
                                                                                          device="cuda")
                                         for name, b in (("fast_cnn", 1024), ("fast_cnn", 128), ("resnet18", 128))}  # fmt: skip
        s.save("bench", out)


def stage_grids(s: Session, names: list[str]) -> None:
    """Seed k of every arm of every named grid before seed k + 1 of any (round robin across chapters)."""
    grids = {name: suites.SUITES[name]("gpu") for name in names}
    done: dict[str, int] = {}
    seeds = max(len(v) for suite in grids.values() for v in suite.values())
    for k in range(seeds):
        for name, suite in grids.items():
            for configs in suite.values():
                if k < len(configs) and s.run(configs[k]) is not None:
                    done[name] = done.get(name, 0) + 1
            s.save("grids", done)
            if s.left() < 10:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=540)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--grids", nargs="+", default=list(GRID_ORDER))
    parser.add_argument("--airbench-rounds", type=int, default=2)
    args = parser.parse_args()
    s = Session(Path(args.out), args.seconds)
    s.log(
        s.record["machine"],
        "| capability",
        torch.cuda.get_device_capability() if torch.cuda.is_available() else None,
    )
    for stage in args.stages:
        if s.left() < 15:
            s.log("out of time before", stage)
            break
        s.log("== stage", stage)
        try:
            if stage == "tests":
                stage_tests(s)
            elif stage == "airbench":
                stage_airbench(s, args.airbench_rounds)
            elif stage == "pilots":
                stage_pilots(s)
            elif stage == "bench":
                stage_bench(s)
            else:
                stage_grids(s, args.grids)
        except Exception as err:  # one stage's failure must not lose the others' results
            import traceback

            s.log(f"stage {stage} failed: {err!r}\n{traceback.format_exc()}")
            s.save(f"{stage}_error", repr(err))
    s.log("done")


if __name__ == "__main__":
    main()

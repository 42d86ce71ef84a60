"""Chapter 5's batch-norm test, a diagnosis (#39): seed 2 of the arm "no augmentation: forced, batch
norm (weighted statistics)" collapsed. Between epochs 10 and 12.5 a weight of 6,158 was applied, the
training loss reached 566, and from epoch 15 the network predicted a constant. The hypothesis: one
sample's weight dominates the weighted statistics, a channel's weighted variance falls toward 0, and
with this network's batch-norm ε of 1e-12 the normalisation multiplies that channel by orders of
magnitude.

This script reruns that seed's config (training is deterministic at one thread on a CPU). Every
importance step logs:
- the largest weight and the weights' effective sample size (ESS);
- over the batch-norm layers, the smallest weighted variance of any channel and the largest absolute
  normalised activation.
`--variant eps` reruns it with ε = 1e-5, and `--variant max-weight` with the weights bounded by 5.

OUT.json holds the history, the final numbers, a summary of the logged steps (the largest weight and
its step, the effective sample size and the smallest weighted variance there, the largest normalised
activation over the run), the steps with a weight above 20 and their neighbours, and the provenance.
`--full FULL.json` also writes every step's row; `--from-full FULL.json` summarises such a file
instead of training (`--run-commit` then names the commit the run was made at).

python benchmarks/diagnose_weighted_collapse.py OUT.json [--variant none|eps|max-weight] [--scale cpu|smoke]
    [--arm "crop+flip: forced, batch norm (weighted statistics)" --seed 0]
(ISMOD_DATA set, OMP_NUM_THREADS=1; about 10 minutes at "cpu" scale on this 2-core machine)

Run on 2026-12-07 (benchmarks/results/diagnose-weighted-collapse-*-cpu-2026-12-07.json): the collapse
reproduced; its cause was one weight, not ε (see Chapter 5c).
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ismod import experiments, suites, train

ARM = "no augmentation: forced, batch norm (weighted statistics)"
SEED = 2

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--variant", choices=("none", "eps", "max-weight"), default="none")
parser.add_argument("--scale", choices=("cpu", "smoke"), default="cpu")
parser.add_argument(
    "--arm", default=ARM, help="the batch-norm test's arm to rerun (a label of its suite)"
)
parser.add_argument("--seed", type=int, default=SEED, help="which of the arm's seeds")
parser.add_argument("--full", help="also write every importance step's row here")
parser.add_argument("--from-full", help="summarise this full output instead of training")
parser.add_argument("--run-commit", help="with --from-full: the commit the run was made at")
parser.add_argument(
    "--run-note", default="", help="with --from-full: how the run was made (threads, load)"
)
args = parser.parse_args()


def _command() -> str:
    """This invocation as a shell command, with paths inside the repository made relative to it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def relative(arg: str) -> str:
        inside = os.path.isabs(arg) and os.path.commonpath([root, arg]) == root
        return os.path.relpath(arg, root) if inside else arg

    return shlex.join(["python", *map(relative, sys.argv)])


def write_summary(path: str, full: dict) -> None:
    """The compact record described above, from the full one."""
    steps = full["steps"]
    top = max(steps, key=lambda r: r["max_weight"])
    near = {r["step"] + d for r in steps if r["max_weight"] > 20 for d in (-1, 0, 1, 2)}
    summary = {"importance_steps": len(steps), "max_weight": top["max_weight"], "max_weight_step": top["step"],
               "ess_at_max_weight": top["ess"], "min_var_at_max_weight": top["min_var"],
               "max_out_at_max_weight": top["max_out"], "min_var": min(r["min_var"] for r in steps),
               "max_out": max(r["max_out"] for r in steps),
               "max_out_step": max(steps, key=lambda r: r["max_out"])["step"]}  # fmt: skip
    record = {k: full[k] for k in ("config", "variant", "history", "final", "provenance")}
    record.update(summary=summary, heavy_steps=[r for r in steps if r["step"] in near])
    with open(path, "w") as f:
        json.dump(record, f, default=str, indent=1)


if args.from_full:
    full = json.load(open(args.from_full))
    made = datetime.date.fromtimestamp(os.path.getmtime(args.from_full)).isoformat()
    full.setdefault(
        "provenance",
        {
            "git_commit": f"{args.run_commit} (ismod); script benchmarks/diagnose_weighted_collapse.py",
            "device": f"CPU ({platform.machine()}, {os.cpu_count()} cores); {args.run_note}",
            "data": "CIFAR-10 (JPEG q75 copy)",
            "date": made,
            "command": f"python benchmarks/diagnose_weighted_collapse.py FULL.json --variant {full['variant']}",
        },
    )
    full["provenance"]["summarised"] = _command()
    write_summary(args.out, full)
    sys.exit(0)

test = suites.chapter5_batch_norm(args.scale)
if args.arm not in test:
    sys.exit(f"--arm must be one of the batch-norm test's arms: {sorted(test)}")
runs = test[args.arm]
config = runs[min(args.seed, len(runs) - 1)]
if args.variant == "eps":
    config = config.replace(batch_norm_eps=1e-5)
elif args.variant == "max-weight":
    config = config.replace(strategy_options={**config.strategy_options, "max_weight": 5.0})
config = config.replace(name=f"diag-weighted-collapse-{args.variant}-s{config.seed}")

steps: list[dict] = []  # one row per importance step
current: dict = {}
plain = train.weighted_statistics


@contextlib.contextmanager
def recording(model, weights):
    """train's weighted_statistics, noting the step's weights for the hook below."""
    w = weights.detach().double()
    omega = w / w.sum()
    current.update(omega=omega, row={"step": len(steps), "max_weight": w.max().item(),
                                     "ess": (1 / (omega**2).sum()).item(), "min_var": float("inf"),
                                     "max_out": 0.0})  # fmt: skip
    with plain(model, weights):
        yield
    steps.append(current.pop("row"))
    current.pop("omega")


def hook(module, inputs, output):
    """In a train-mode batch-norm layer of an importance step: the channels' weighted variance (the
    statistics the layer normalised with) and the largest normalised activation."""
    if "omega" not in current or not isinstance(module, _BatchNorm) or not module.training:
        return
    x = inputs[0].detach().double()
    shape = (-1,) + (1,) * (x.dim() - 1)
    per_sample = x.flatten(2).mean(2) if x.dim() > 2 else x  # (b, C) means over positions
    sq = (x**2).flatten(2).mean(2) if x.dim() > 2 else x**2
    omega = current["omega"].view(shape[:2])
    mean = (omega * per_sample).sum(0)
    var = (omega * sq).sum(0) - mean**2
    row = current["row"]
    row["min_var"] = min(row["min_var"], var.min().item())
    row["max_out"] = max(row["max_out"], output.detach().abs().max().item())


train.weighted_statistics = recording
handle = torch.nn.modules.module.register_module_forward_hook(hook)
try:
    result = experiments.run(config, progress=False)
finally:
    handle.remove()
    train.weighted_statistics = plain

history = [{k: h.get(k) for k in ("epoch", "step", "train_eval_loss", "test_accuracy", "max_weight")}
           for h in result.history]  # fmt: skip
commit = subprocess.run(
    ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
).stdout.strip()
provenance = {"git_commit": f"{commit} (ismod); script benchmarks/diagnose_weighted_collapse.py",
              "device": f"CPU ({platform.machine()}, {os.cpu_count()} cores), {torch.get_num_threads()} torch thread(s)",
              "data": "CIFAR-10 (JPEG q75 copy)", "date": datetime.date.today().isoformat(),
              "command": _command()}  # fmt: skip
full = {"config": config.to_dict(), "variant": args.variant, "history": history, "final": result.final,
        "steps": steps, "provenance": provenance}  # fmt: skip
if args.full:
    with open(args.full, "w") as f:
        json.dump(full, f, default=str)
write_summary(args.out, full)
worst = max(steps, key=lambda r: r["max_out"]) if steps else None
print(json.dumps({"final_test_accuracy": result.final["test_accuracy"], "importance_steps": len(steps),
                  "worst_step": worst}))  # fmt: skip

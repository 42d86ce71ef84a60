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

python benchmarks/diagnose_weighted_collapse.py OUT.json [--variant none|eps|max-weight] [--scale cpu|smoke]
(ISMOD_DATA set, OMP_NUM_THREADS=1; about 10 minutes at "cpu" scale on this 2-core machine)
"""

import argparse
import contextlib
import json

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ismod import experiments, suites, train

ARM = "no augmentation: forced, batch norm (weighted statistics)"
SEED = 2

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--variant", choices=("none", "eps", "max-weight"), default="none")
parser.add_argument("--scale", choices=("cpu", "smoke"), default="cpu")
args = parser.parse_args()

runs = suites.chapter5_batch_norm(args.scale)[ARM]
config = runs[min(SEED, len(runs) - 1)]
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
json.dump({"config": config.to_dict(), "variant": args.variant, "history": history,
           "final": result.final, "steps": steps}, open(args.out, "w"), default=str)  # fmt: skip
worst = max(steps, key=lambda r: r["max_out"]) if steps else None
print(json.dumps({"final_test_accuracy": result.final["test_accuracy"], "importance_steps": len(steps),
                  "worst_step": worst}))  # fmt: skip

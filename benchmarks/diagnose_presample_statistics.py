"""Chapter 5's batch-norm test, a diagnosis (#39): its arm "forced, batch norm (presample statistics)"
did not train at seed 0 (test accuracy 11.6%, training loss at chance). Is it the weights or the
normalisation? This run asks: does normalising with a uniform presample's
statistics (stop-gradient, ismod.train.normalized_by) train this network when the batch is drawn
uniformly, with no importance weights? Same config as ch5b-uniform-batch-noaug-s0, but each step's
batch is the first b of a uniform presample of B = 6b and is normalised with that presample's statistics."""

# python benchmarks/diagnose_presample_statistics.py benchmarks/results/<name>.json  (ISMOD_DATA set; ~10 min on 2 cores)
import json
import sys

import torch

from ismod import strategies, suites, experiments
from ismod.strategies.base import Selection, Strategy


class UniformPresampleNorm(Strategy):
    name = "uniform_presample_norm"
    stateless = True

    def select(self, step):
        pre = torch.randperm(self.num_items, device=self.device, generator=self.generator)[
            : 6 * self.batch_size
        ]
        _, _, (x, y) = self.score_fn(pre, augmented=True)
        b = self.batch_size
        return Selection(pre[:b], None, (x[:b], y[:b]), x)


strategies.STRATEGIES[UniformPresampleNorm.name] = UniformPresampleNorm
base = suites.chapter5_batch_norm("cpu")["no augmentation: uniform, batch norm"][0]
config = base.replace(
    name="diag-uniform-presample-norm-s0",
    strategy=UniformPresampleNorm.name,
    strategy_options={},
    gradient_error_draws=0,
)
result = experiments.run(config, progress=False)
out = [
    (round(h["epoch"], 1), h.get("train_eval_loss"), h.get("test_accuracy"), h.get("grad_norm"))
    for h in result.history
]
print(json.dumps(out))
json.dump(
    {"config": config.to_dict(), "history": out, "final": result.final},
    open(sys.argv[1], "w"),
    default=str,
)

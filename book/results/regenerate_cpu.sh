#!/usr/bin/env bash
# Regenerate the saved "cpu" results (about 410 minutes of two-core machine time as saved), suite by
# suite, in an order that keeps compared arms together: the pilots first, then Chapters 5 and 6's seven
# equal-time arms interleaved seed by seed (no other work on the machine meanwhile: a seconds budget
# pairs seeds only on one machine in one state), Chapter 6's race under a cost model (about 31
# minutes; its modelled budget does not mind a busy machine), Chapter 5's diagnosis (its pilot, the dissection and
# critical-batch grids at equal steps, the prediction grid: about 170 minutes, the dissection 86 of them),
# then the epoch-budgeted grids (Chapter 3's with the report's optimiser about 34 minutes and Chapter 7's
# 64-epoch pilot about 25, on a machine about 2.5x slower than the one that ran the rest).
# Saved results with the same config, data and behaviour version are kept, so an interrupted run
# resumes where it stopped. Run from a clean checkout (the commit goes into every result).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
export ISMOD_GIT_COMMIT=${ISMOD_GIT_COMMIT:-$(git rev-parse HEAD)}
for suite in ${SUITES:-pilots equal_time chapter6_modelled chapter5_tau chapter5_prediction_pilot chapter5_dissection_weights chapter5_dissection_changes chapter5_critical_batch chapter5_prediction chapter4 chapter4_resnet chapter3 chapter3_report chapter3_variants chapter7 chapter7_overfit_pilot chapter7_overfit harness}; do
  command="python -m ismod suite $suite --scale cpu --out book/results/cpu"
  echo "== $command ($(date -u +%H:%M:%S))"
  ISMOD_COMMAND="$command" "$PY" -m ismod suite "$suite" --scale cpu --out book/results/cpu
done

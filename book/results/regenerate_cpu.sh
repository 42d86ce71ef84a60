#!/usr/bin/env bash
# Regenerate the saved "cpu" results, suite by suite: about 450 minutes of two-core machine time as
# saved, about 360 counting each arm's least-loaded seed for all its seeds (the saved timings mix days
# on which the shared machine ran 1.3-1.4x apart, and runs made under load). By that count every grid
# takes at most about 45 minutes (Chapter 5's dissection is two grids, chapter5_dissection_weights and
# _changes, for that reason), except Chapter 7's room-to-overfit grid: its 16 runs beyond the pilot
# took 47 minutes on 2026-12-03. The order keeps compared arms together: the pilots first, then
# Chapters 5 and 6's seven equal-time arms (at cpu scale the race under a cost model, whose modelled
# budget does not mind a busy machine; equal_time and chapter6_modelled name the same runs) and the
# time-to-target race of the descendants, Chapter 5's diagnosis at equal steps
# and forward passes, then the epoch-budgeted grids of Chapters 4, 3 and 7.
# Saved results with the same config, data and behaviour version are kept, so an interrupted run
# resumes where it stopped. Run from a clean checkout (the commit goes into every result).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
export ISMOD_GIT_COMMIT=${ISMOD_GIT_COMMIT:-$(git rev-parse HEAD)}
for suite in ${SUITES:-pilots equal_time chapter6_modelled chapter6_speed chapter5_tau chapter5_prediction_pilot chapter5_dissection_weights chapter5_dissection_changes chapter5_critical_batch chapter5_prediction chapter4 chapter4_resnet chapter3 chapter3_report chapter3_variants chapter7 chapter7_overfit_pilot chapter7_overfit harness}; do
  command="python -m ismod suite $suite --scale cpu --out book/results/cpu"
  echo "== $command ($(date -u +%H:%M:%S))"
  ISMOD_COMMAND="$command" "$PY" -m ismod suite "$suite" --scale cpu --out book/results/cpu
done

#!/usr/bin/env bash
# The reflow students scripts/benchmark_fast_sampling.py measures, at fixed step counts (what the 2026-11-30 benchmark
# ran, as two one-thread processes side by side):
#   bash scripts/train_fast_sampling_students.sh runs/bench14 runs/bench [fm_cmr teacher folder]
# teachers (in the second folder): mask_generator_signed_distance (mask_generator's benchmark run) and ddpm_cmr_private
# (the privacy benchmark's new default), both best_ema.pt; each student: 2,048 DDIM-50 couplings on the training set's
# conditions, then 10 x 200 = 2,000 steps from the teacher's weights. Rerunning resumes (couplings and checkpoints kept).
# With a third folder (an fm_cmr run on the same split, e.g. the ACDC cpu64 pipeline's runs/acdc_cpu64/fm_cmr), an
# fm_cmr student too, after the other two (its couplings: Euler-50).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd); W=$(realpath -m "${1:-runs/bench14}"); T=$(realpath "${2:-runs/bench}")
FM=${3:+$(realpath "$3")}
mkdir -p "$W"
student() {
  local bundle=$1 teacher=$2
  (cd "$REPO/bundles/$bundle" && OMP_NUM_THREADS=1 python -m monai.bundle run \
    --config_file "['configs/common.yaml','configs/train.yaml','configs/distill.yaml']" \
    --bundle_root "$W/${bundle}_student" --dataset_dir "$T/acdc64" --teacher "$teacher" --max_epochs 10 --seed 0 \
    --progress_bar False >> "$W/${bundle}_student.log" 2>&1)
}
student mask_generator "$T/mask_generator_signed_distance/models/best_ema.pt" & mask=$!
student ddpm_cmr "$T/ddpm_cmr_private/models/best_ema.pt" & image=$!
wait "$mask" && wait "$image"
if [ -n "$FM" ]; then student fm_cmr "$FM/models/best_ema.pt"; fi

#!/usr/bin/env bash
# The generators scripts/benchmark_privacy_audit.py audits, trained at fixed step counts (what the 2026-11-30 benchmark
# ran, there split over two one-thread queues):
#   bash scripts/train_privacy_benchmark_generators.sh runs/bench
# new default: ddpm_cmr's train.yaml, 33 epochs x 200 = 6,600 steps (the old default ran 6,582);
# public pre-training: 100 procedural phantom patients, 2,000 steps; DP-SGD fine-tuning from it on the 50 members,
# 20 passes at (10, 1e-5); DP-SGD from scratch, the same budget and passes; overfit sanity: 5 patients, no
# augmentation, 1,000 steps; public start without DP (the private default): the shipped phantom weights of ddpm_cmr
# and fm_cmr (zoo/phantom), then the augmented recipe for 6 x 200 = 1,200 steps on the 50 members (fm_cmr also
# 3 x 200); ldm_cmr's public start (public_start.yaml: the phantom autoencoder as shipped, its latent denoiser then
# 6 x 200 and 3 x 200 private steps); DP-SGD from ddpm_cmr's shipped phantom weights (the default's start) at
# (10, 1e-5) over 20 passes, at batch 16 and at an expected batch of 64 (scripts/screen_dp_public_start.py); the old
# recipe (no augmentation, 15 x 200 steps, final weights) retrained as the utility reference on the same mask set.
# Rerunning resumes each run from its last checkpoint. Needs <work>/acdc64 (scripts/benchmark_ddpm_cmr.py prepares it).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd); W=$(realpath "${1:-runs/bench}")
cd "$REPO"
DDPM="['bundles/ddpm_cmr/configs/common.yaml','bundles/ddpm_cmr/configs/train.yaml']"
DP="['bundles/ddpm_cmr/configs/common.yaml','bundles/ddpm_cmr/configs/train.yaml','bundles/ddpm_cmr/configs/dp_train.yaml']"
DPP="['bundles/ddpm_cmr/configs/common.yaml','bundles/ddpm_cmr/configs/train.yaml','bundles/ddpm_cmr/configs/dp_train.yaml','bundles/ddpm_cmr/configs/dp_pretrained.yaml']"
run() { local root=$1; shift; OMP_NUM_THREADS=1 python -m monai.bundle run --bundle_root "$root" "$@" --seed 0 --progress_bar False >> "$root.train.log" 2>&1; }
run "$W/ddpm_cmr_private" --config_file "$DDPM" --dataset_dir "$W/acdc64" --max_epochs 33
python - "$W" <<'PY'
import sys
from pathlib import Path
from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.phantom import write_phantom_cohort
from cmrsynth.data.prepare import PrepareConfig, prepare_cohort
w = Path(sys.argv[1])
if not (w / "phantom64" / "datalist.json").is_file():
    write_phantom_cohort(w / "phantom_cohort", n_per_group=20, seed=1, overwrite=True)
    prepare_cohort(read_acdc(w / "phantom_cohort"), w / "phantom64", PrepareConfig(size=64, seed=0))
PY
run "$W/ddpm_cmr_public" --config_file "$DDPM" --dataset_dir "$W/phantom64" --max_epochs 10
run "$W/ddpm_cmr_dp_pretrained" --config_file "$DPP" --dataset_dir "$W/acdc64" --max_epochs 100000 \
  --pretrained "$W/ddpm_cmr_public/models/best_ema.pt"
run "$W/ddpm_cmr_dp_scratch" --config_file "$DP" --dataset_dir "$W/acdc64" --max_epochs 100000
PYTHONPATH="$REPO/scripts" python -c "from pathlib import Path; from benchmark_privacy_audit import few_patient_datalist; few_patient_datalist(Path('$W/acdc64'), 5)"
run "$W/ddpm_cmr_overfit5" --config_file "$DDPM" --dataset_dir "$W/acdc64" --datalist "$W/acdc64/datalist_5patients.json" \
  --max_epochs 5 --augment False
FM="['bundles/fm_cmr/configs/common.yaml','bundles/fm_cmr/configs/train.yaml']"
for b in ddpm_cmr fm_cmr ldm_cmr; do
  [ -f "$W/zoo_$b/models/best_ema.pt" ] || cmr-synth zoo install "zoo/phantom/$b.zip" "$W/zoo_$b"
done
run "$W/ddpm_cmr_pre6" --config_file "$DDPM" --dataset_dir "$W/acdc64" --max_epochs 6 --pretrained "$W/zoo_ddpm_cmr/models/best_ema.pt"
run "$W/fm_cmr_pre6" --config_file "$FM" --dataset_dir "$W/acdc64" --max_epochs 6 --pretrained "$W/zoo_fm_cmr/models/best_ema.pt"
run "$W/fm_cmr_pre3" --config_file "$FM" --dataset_dir "$W/acdc64" --max_epochs 3 --pretrained "$W/zoo_fm_cmr/models/best_ema.pt"
run "$W/ddpm_cmr_dp_zoo_b16" --config_file "$DPP" --dataset_dir "$W/acdc64" --max_epochs 100000 --pretrained "$W/zoo_ddpm_cmr/models/best_ema.pt"
# a quarter of the steps at 4x the batch: validation every 50 steps keeps the cadence in samples
run "$W/ddpm_cmr_dp_zoo_b64" --config_file "$DPP" --dataset_dir "$W/acdc64" --max_epochs 100000 --pretrained "$W/zoo_ddpm_cmr/models/best_ema.pt" \
  --batch_size 64 --epoch_length 50
LDM="['bundles/ldm_cmr/configs/common.yaml','bundles/ldm_cmr/configs/train.yaml','bundles/ldm_cmr/configs/train_diffusion.yaml','bundles/ldm_cmr/configs/public_start.yaml']"
for n in 6 3; do
  run "$W/ldm_cmr_pre$n" --config_file "$LDM" --dataset_dir "$W/acdc64" --max_epochs $n --pretrained "$W/zoo_ldm_cmr/models/best_ema.pt"
done
run "$W/ddpm_cmr_old" --config_file "$DDPM" --dataset_dir "$W/acdc64" --max_epochs 15 --augment False

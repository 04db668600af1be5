#!/usr/bin/env bash
# The phantom-trained weights the demo starts from (zoo/phantom/*.zip), at fixed step counts:
#   bash scripts/train_phantom_weights.sh runs/phantom_weights
# A public phantom cohort (seed 101, 8 patients per group: none of them is a demo patient, whose cohort is seed 0),
# prepared at 64x64; each generator bundle's default recipe (augmented, validation-best EMA) for a fixed number of
# 200-step epochs, as two one-thread processes side by side; then each trained root is packed with the zoo
# (`cmr-synth zoo pack`), which lists the weights with their sha256. Rerunning resumes.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd); W=$(realpath -m "${1:-runs/phantom_weights}")
mkdir -p "$W"
if [ ! -f "$W/prepared/datalist.json" ]; then
  python -c "from cmrsynth.data.phantom import write_phantom_cohort; write_phantom_cohort('$W/cohort', n_per_group=8, seed=101, overwrite=True)"
  python "$REPO/scripts/prepare_data.py" --input "$W/cohort" --out "$W/prepared" --preset cpu --overwrite
fi
train() {  # bundle root_name epochs configs...
  local bundle=$1 name=$2 epochs=$3; shift 3
  local files; files=$(printf "'configs/%s'," "$@")
  (cd "$REPO/bundles/$bundle" && OMP_NUM_THREADS=1 python -m monai.bundle run --config_file "[${files%,}]" \
    --bundle_root "$W/$name" --dataset_dir "$W/prepared" --max_epochs "$epochs" --seed 0 --progress_bar False \
    >> "$W/$name.log" 2>&1)
}
{ train mask_generator mask_generator 15 common.yaml train.yaml
  train fm_cmr fm_cmr 12 common.yaml train.yaml; } &
{ train ddpm_cmr ddpm_cmr 12 common.yaml train.yaml
  train ldm_cmr ldm_cmr 5 common.yaml train_autoencoder.yaml
  train ldm_cmr ldm_cmr 10 common.yaml train.yaml train_diffusion.yaml; } &
wait
# Pack: each generator's validation-best EMA; ldm_cmr also ships its autoencoder (the weights alone, no optimiser or
# discriminator: what its latent training and inference load).
python - "$W" <<'PY'
import sys
from pathlib import Path

import torch

root = Path(sys.argv[1]) / "ldm_cmr" / "models" / "autoencoder"
state = torch.load(root / "checkpoint_final.pt", map_location="cpu", weights_only=True)
slim = Path(sys.argv[1]) / "ldm_cmr_slim" / "models"
(slim / "autoencoder").mkdir(parents=True, exist_ok=True)
torch.save({k: state[k] for k in ("autoencoder", "autoencoder_ema") if k in state}, slim / "autoencoder" / "checkpoint_final.pt")
(slim / "best_ema.pt").write_bytes((Path(sys.argv[1]) / "ldm_cmr" / "models" / "best_ema.pt").read_bytes())
PY
for b in mask_generator ddpm_cmr fm_cmr; do
  cmr-synth zoo pack "$REPO/bundles/$b" "$W/$b" "$REPO/zoo/phantom/$b.zip" --weights models/best_ema.pt --half
done
cmr-synth zoo pack "$REPO/bundles/ldm_cmr" "$W/ldm_cmr_slim" "$REPO/zoo/phantom/ldm_cmr.zip" --half \
  --weights models/best_ema.pt models/autoencoder/checkpoint_final.pt

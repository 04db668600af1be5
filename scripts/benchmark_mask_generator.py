# Copyright (c) cmr-synth contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Benchmark of the mask_generator bundle on real ACDC (CPU preset, 64x64): the recipe against its one-hot control.

Trains two mask generators for the same fixed number of steps on the 50 train patients, side by side on one thread
each: the bundle's default (nested signed distance maps, class per group x phase x slice position) and the same
recipe on one-hot masks (the codec the bundle used before). Both sample masks per class with DDIM; each set is
compared with the real test patients' masks: plausibility before and after post-processing beside the real test
rate, per group x phase and per slice position; 1-D Wasserstein distances of LV area, myocardial thickness, RV/LV
ratio, LV circularity and RV area, beside the same distance between the real train and real test masks; diversity
(mean pairwise Dice within a stratum) and near copies of training masks (the audit's mask check). Then ddpm_cmr
(weights of scripts/benchmark_fm_cmr.py) draws an image for every plausible mask of the default recipe, and
seg_utility trains a synthetic-only segmenter on them, scored on the real test patients beside the row of the
previous masks. Writes bundles/mask_generator/docs/benchmark.json, figures and the docs table.

    python scripts/benchmark_mask_generator.py --work runs/bench
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cmrsynth.benchmark import REPO, machine, parser, prepared_acdc, write_benchmark
from cmrsynth.bundle_run import run_bundle, trainer_progress

BUNDLE = REPO / "bundles" / "mask_generator"
#: the recipes compared: config overrides on top of the bundle's defaults
RECIPES = {"signed_distance": {}, "one_hot": {"codec": {"_target_": "cmrsynth.generative.IdentityCodec"}}}


def train_fixed(name: str, data: Path, root: Path, args) -> dict:
    """Train one recipe for ``args.epochs`` 200-step epochs (skipped when its final checkpoint exists)."""
    final = root / "models" / "checkpoint_final.pt"
    if not final.is_file():
        root.mkdir(parents=True, exist_ok=True)
        run_bundle(BUNDLE, ["common.yaml", "train.yaml"], root,
                   {"dataset_dir": str(data), "max_epochs": args.epochs, "seed": args.seed, "progress_bar": False,
                    **RECIPES[name]}, log=root / "train.log", env={"OMP_NUM_THREADS": "1"})
    from cmrsynth.benchmark import training_facts

    return {"recipe": name, "overrides": RECIPES[name], **trainer_progress(final), **training_facts(root)}


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20, help="200-step epochs of each recipe (4,000 steps)")
    args = p.parse_args()
    work = Path(args.work)
    data = prepared_acdc(work / "acdc64", 64)
    path = BUNDLE / "docs" / "benchmark.json"
    result = {"bundle": "mask_generator", "machine": machine(), "seed": args.seed,
              "data": "ACDC (../shared/data/acdc), 64x64 CPU preset, seed-0 split: train 50 / val 10 / test 10 patients"}
    roots = {name: work / f"mask_generator_{name}" for name in RECIPES}
    with ThreadPoolExecutor(len(RECIPES)) as pool:  # one thread each: the comparison shares the machine evenly
        result["training"] = dict(zip(RECIPES, pool.map(lambda n: train_fixed(n, data, roots[n], args), RECIPES)))
    result["finished"] = time.strftime("%Y-%m-%d %H:%M")
    write_benchmark(path, result)
    print(json.dumps(result["training"], indent=1)[:2000])


if __name__ == "__main__":
    main()

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
"""Benchmark of the mask_generator bundle on real ACDC (CPU preset, 64x64).

Trains on the benchmark split's 50 train patients within a wall-time budget, samples masks per (group, phase)
with DDIM, and compares them with the real test patients' masks: plausibility rate, and 1-D Wasserstein
distances of LV area, myocardial thickness and RV/LV area ratio per group and phase. Writes
bundles/mask_generator/docs/benchmark.json and figures.

    python scripts/benchmark_mask_generator.py --minutes 50
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from cmrsynth.benchmark import REPO, load_section, parser, replace_marked, run_benchmark, training_rows, validation_losses
from cmrsynth.bundle_run import run_bundle
from cmrsynth.masks import plausibility, shape_distances, shape_stats
from cmrsynth.report import save_overlay_grid

BUNDLE = REPO / "bundles" / "mask_generator"


def evaluate(args, data: Path, root: Path) -> dict:
    """Sample masks and compare them with the real test masks."""
    out = root / "eval" / "masks"
    overrides = {"per_class": args.per_class, "num_inference_steps": args.steps, "output_dir": str(out),
                 "keep_implausible": True, "seed": args.seed}
    seconds = run_bundle(BUNDLE, ["common.yaml", "inference.yaml"], root, overrides, log=root / "inference.log",
                         env={"OMP_NUM_THREADS": str(args.threads)})
    synthetic = json.loads((out / "datalist.json").read_text())
    gen = synthetic["synthetic"]
    real = load_section(data, "test")
    spacing = real[0]["spacing"][0]
    real_pairs = [(f"{e['group']}/{e['phase']}", shape_stats(e["mask"], spacing)) for e in real]
    gen_pairs = [(f"{e['group']}/{e['phase']}", {k: e[k] for k in ("lv_area", "myo_thickness", "rv_lv_ratio")}) for e in gen]
    real_plausible = float(np.mean([plausibility(e["mask"])["plausible"] for e in real]))
    by_group = {}
    for e in gen:
        by_group.setdefault(e["group"], []).append(e["plausible"])
    # figure: generated masks beside real test masks of the same groups
    shown_gen = [np.asanyarray(nib.load(out / e["label"]).dataobj) for e in gen[:: max(1, len(gen) // 10)][:10]]
    shown_real = [e["mask"] for e in real[:: max(1, len(real) // 10)][:10]]
    figure = BUNDLE / "docs" / "masks_generated_vs_real.png"
    save_overlay_grid([np.zeros_like(m, np.float32) for m in shown_gen + shown_real], shown_gen + shown_real, figure,
                      ["generated"] * len(shown_gen) + ["real test"] * len(shown_real), ncols=10)
    return {
        "sampler": f"DDIM-{args.steps}", "masks_generated": len(gen), "sampling_wall_seconds": round(seconds, 1),
        "seconds_per_mask": synthetic["summary"]["seconds_per_mask"],
        "plausibility_rate": synthetic["summary"]["plausibility_rate"],
        "plausibility_rate_by_group": {g: float(np.mean(v)) for g, v in sorted(by_group.items())},
        "failed_checks": synthetic["summary"]["failed_checks"],
        "real_test_plausibility_rate": real_plausible,
        "shape_wasserstein_vs_real_test": shape_distances(real_pairs, gen_pairs),
        "figure": str(figure.relative_to(REPO)),
        "validation_mse_raw_vs_ema": validation_losses(BUNDLE, data, root),
    }


def results_markdown(r: dict) -> str:
    """The docs table rendered from benchmark.json."""
    e = r["evaluation"]
    lines = training_rows(r) + [
             f"| sampling | {e['masks_generated']} masks, {e['sampler']}, {e['seconds_per_mask']:.2f} s per mask |",
             f"| **plausibility rate** | **{e['plausibility_rate']:.0%}** of generated masks (real test masks: "
             f"{e['real_test_plausibility_rate']:.0%}); failed checks: {e['failed_checks']} |",
             "| plausibility by group | " + ", ".join(f"{g} {x:.0%}" for g, x in e["plausibility_rate_by_group"].items()) + " |",
             "", "1-D Wasserstein distances between generated and real test-mask shape statistics:", "",
             "| stratum | n real | n generated | W1 LV area (mm²) | W1 myo thickness (mm) | W1 RV/LV ratio |",
             "|---|---|---|---|---|---|"]
    for k, w in e["shape_wasserstein_vs_real_test"].items():
        lines.append(f"| {k} | {w['n_real']} | {w['n_generated']} | {w['lv_area']:.3g} | {w['myo_thickness']:.3g} | {w['rv_lv_ratio']:.3g} |")
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--per-class", type=int, default=20, help="masks per (group, phase)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    args = p.parse_args()
    training = {"batch_size": 16, "network": "DiffusionModelUNet (16,32,32), 0.28 M", "prediction_type": "v_prediction"}
    if args.stage != "render":
        run_benchmark(args, BUNDLE, training, evaluate)
    result = json.loads((BUNDLE / "docs" / "benchmark.json").read_text())
    replace_marked(BUNDLE / "docs" / "README.md", "results", results_markdown(result))
    print(json.dumps(result, indent=1)[:3000])


if __name__ == "__main__":
    main()

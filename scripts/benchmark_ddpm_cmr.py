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
"""Benchmark of the ddpm_cmr bundle on real ACDC (CPU preset, 64x64).

Trains the mask-conditioned DDPM on the benchmark split's 50 train patients within a wall-time budget, then
draws images for the real test patients' masks with DDPM-1000 (a few slices: it is slow), DDIM-50 and DDIM-10,
recording sampling seconds per slice, and a grid of generated images beside the real images of the same
masks. Writes bundles/ddpm_cmr/docs/benchmark.json. Fidelity and utility scores come from seg_utility.

    python scripts/benchmark_ddpm_cmr.py --minutes 50
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from cmrsynth.benchmark import REPO, load_section, parser, replace_marked, run_benchmark, training_rows, validation_losses
from cmrsynth.bundle_run import run_bundle
from cmrsynth.report import save_overlay_grid

BUNDLE = REPO / "bundles" / "ddpm_cmr"


def sample(args, data: Path, root: Path, name: str, sampler: str, steps: int, max_images: int | None) -> dict:
    """Draw images for the real test masks with one sampler; return its timing."""
    out = root / "eval" / name
    overrides = {"mask_datalist": str(data / "datalist.json"), "mask_key": "test", "output_dir": str(out),
                 "sampler": sampler, "num_inference_steps": steps, "max_images": max_images, "seed": args.seed}
    run_bundle(BUNDLE, ["common.yaml", "inference.yaml"], root, overrides, log=root / "inference.log",
               env={"OMP_NUM_THREADS": str(args.threads)})
    summary = json.loads((out / "datalist.json").read_text())["summary"]
    return {"sampler": sampler.upper() + f"-{steps if sampler == 'ddim' else 1000}", "images": summary["generated"],
            "seconds_per_slice": round(summary["seconds_per_image"], 3), "output": str(out)}


def figure(data: Path, out: Path, png: Path, n: int = 10) -> None:
    """Generated images (top row) beside the real images of the same test masks (bottom row), masks overlaid."""
    real = load_section(data, "test")
    picked = list(range(0, len(real), max(1, len(real) // n)))[:n]
    generated = [np.asanyarray(nib.load(out / "images" / f"syn{i:05d}.nii.gz").dataobj) for i in picked]
    save_overlay_grid(generated + [real[i]["array"] for i in picked] + generated,
                      [None] * len(picked) + [None] * len(picked) + [real[i]["mask"] for i in picked], png,
                      [f"generated {real[i]['group']}" for i in picked] + ["real, same mask"] * len(picked)
                      + ["generated + mask"] * len(picked), ncols=len(picked))


def evaluate(args, data: Path, root: Path) -> dict:
    """Time DDIM-50, DDIM-10 and DDPM-1000 on the real test masks; draw generated beside real images."""
    runs = [sample(args, data, root, "ddim50", "ddim", 50, None), sample(args, data, root, "ddim10", "ddim", 10, None),
            sample(args, data, root, "ddpm1000", "ddpm", 1000, args.ddpm_images)]
    png = BUNDLE / "docs" / "generated_vs_real.png"
    figure(data, Path(runs[0]["output"]), png)
    return {"sampling": [{k: v for k, v in r.items() if k != "output"} for r in runs], "figure": str(png.relative_to(REPO)),
            "validation_mse_raw_vs_ema": validation_losses(BUNDLE, data, root)}


def results_markdown(r: dict) -> str:
    """The docs table rendered from benchmark.json."""
    e = r["evaluation"]
    lines = training_rows(r, r["training"]["mask_mode"]) + ["",
             f"Sampling time for the real test masks ({r['threads']} threads, batch 16):", "",
             "| sampler | slices | seconds per slice |", "|---|---|---|"]
    lines += [f"| {s['sampler']} | {s['images']} | {s['seconds_per_slice']:.2f} |" for s in e["sampling"]]
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--ddpm-images", type=int, default=8, help="slices drawn with full 1000-step DDPM")
    args = p.parse_args()
    training = {"batch_size": 16, "mask_mode": "concat", "network": "DiffusionModelUNet (16,32,32), 0.28 M",
                "prediction_type": "v_prediction"}
    if args.stage != "render":
        run_benchmark(args, BUNDLE, training, evaluate)
    result = json.loads((BUNDLE / "docs" / "benchmark.json").read_text())
    replace_marked(BUNDLE / "docs" / "README.md", "results", results_markdown(result))
    print(json.dumps(result, indent=1)[:3000])


if __name__ == "__main__":
    main()

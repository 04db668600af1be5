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
"""Benchmark of synthetic-data utility on real ACDC (CPU preset, 64x64): seg_utility trained per mode, scored on
the 10 real test patients per patient volume.

Modes (select with --modes; results merge into bundles/seg_utility/docs/benchmark.json, which records what ran):
- real: the 50 real train patients (baseline)
- synthetic: synthetic images only (ddpm_cmr on mask_generator masks)
- mixed: real + synthetic, one synthetic slice per real slice
- fewN / fewN+syn: N real patients (round-robin over groups), without / with the synthetic set

    python scripts/benchmark_seg_utility.py --make-synthetic 90 --modes real,synthetic --minutes 15
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from cmrsynth.benchmark import REPO, machine, parser, prepared_acdc, write_benchmark
from cmrsynth.bundle_run import run_bundle

BUNDLE = REPO / "bundles" / "seg_utility"


def make_synthetic(work: Path, per_class: int, threads: int, seed: int) -> Path:
    """Masks from the benchmark's mask_generator, then ddpm_cmr images on them (DDIM-50): the synthetic set."""
    env = {"OMP_NUM_THREADS": str(threads)}
    masks = work / "synthetic" / "masks"
    run_bundle(REPO / "bundles" / "mask_generator", ["common.yaml", "inference.yaml"], work / "mask_generator",
               {"per_class": per_class, "output_dir": str(masks), "seed": seed + 1}, log=work / "synthetic.log", env=env)
    images = work / "synthetic" / "images"
    run_bundle(REPO / "bundles" / "ddpm_cmr", ["common.yaml", "inference.yaml"], work / "ddpm_cmr",
               {"mask_datalist": str(masks / "datalist.json"), "output_dir": str(images), "seed": seed + 1},
               log=work / "synthetic.log", env=env)
    return images / "datalist.json"


def sources(mode: str, real: Path, synthetic: Path) -> list[dict]:
    """The training sources of a mode."""
    real_src = {"datalist": str(real), "key": "training"}
    syn_src = {"datalist": str(synthetic), "key": "training"}
    if mode == "real":
        return [real_src]
    if mode == "synthetic":
        return [syn_src]
    if mode == "mixed":
        return [real_src, {**syn_src, "ratio": 1.0}]
    if mode.startswith("few"):
        k = int(mode[3:].split("+")[0])
        return [{**real_src, "patients": k}] + ([syn_src] if mode.endswith("+syn") else [])
    raise ValueError(f"unknown mode {mode!r}; allowed: real, synthetic, mixed, fewN, fewN+syn")


def run_mode(mode: str, args, real: Path, synthetic: Path, work: Path) -> dict:
    """Train seg_utility for one mode within the budget and score it on the real test patients."""
    root = work / "seg_utility" / mode
    root.mkdir(parents=True, exist_ok=True)
    env = {"OMP_NUM_THREADS": str(args.threads)}
    train = {"real_datalist": str(real), "sources": sources(mode, real, synthetic), "max_epochs": 100000,
             "max_minutes": args.minutes, "seed": args.seed, "progress_bar": False}
    t0 = time.perf_counter()
    run_bundle(BUNDLE, ["common.yaml", "train.yaml"], root, train, log=root / "train.log", env=env)
    wall = time.perf_counter() - t0
    run_bundle(BUNDLE, ["common.yaml", "evaluate.yaml"], root, {"real_datalist": str(real), "eval_key": "test"},
               log=root / "evaluate.log", env=env)
    metrics = json.loads((root / "eval" / "evaluation" / "metrics.json").read_text())
    composed = json.loads((root / "models" / "training_set.json").read_text())["training"]
    from cmrsynth.bundle_run import trainer_progress

    return {"sources": train["sources"], "training_slices": len(composed), "training_wall_seconds": round(wall, 1),
            **trainer_progress(root / "models" / "checkpoint_final.pt"), "test_patients": metrics["patients"],
            "summary": metrics["summary"]}


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--modes", default="real,synthetic,mixed,few5,few5+syn,few10,few10+syn")
    p.add_argument("--make-synthetic", type=int, default=0, help="masks per (group, phase) to generate first (0: reuse)")
    args = p.parse_args()
    work = Path(args.work)
    real = prepared_acdc(work / "acdc64", 64) / "datalist.json"
    synthetic = work / "synthetic" / "images" / "datalist.json"
    if args.make_synthetic:
        synthetic = make_synthetic(work, args.make_synthetic, args.threads, args.seed)
    path = BUNDLE / "docs" / "benchmark.json"
    result = json.loads(path.read_text()) if path.is_file() else {"modes": {}}
    result.update({"bundle": "seg_utility", "data": "ACDC (../shared/data/acdc), 64x64 CPU preset, seed-0 split: "
                   "train 50 / val 10 / test 10 patients; scored per patient volume on the 10 test patients",
                   "machine": machine(), "threads": args.threads, "budget_minutes_per_mode": args.minutes,
                   "synthetic_set": str(synthetic.relative_to(REPO)) if synthetic.is_relative_to(REPO) else str(synthetic)})
    for mode in args.modes.split(","):
        result["modes"][mode] = run_mode(mode, args, real, synthetic, work)
        result["finished"] = time.strftime("%Y-%m-%d %H:%M")
        write_benchmark(path, result)
    print(json.dumps({m: {k: round(v["mean"], 3) for k, v in r["summary"].items() if "/dice_" in k}
                      for m, r in result["modes"].items()}, indent=1))


if __name__ == "__main__":
    main()

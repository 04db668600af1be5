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
"""Benchmark of fm_cmr beside ddpm_cmr on real ACDC (CPU preset, 64x64): the paper's table so far, DDPM and FM.

Both image generators train the same UNet for the same number of steps on the 50 train patients (ddpm_cmr and
mask_generator are trained here too, at fixed steps, unless their roots in --work already hold a final checkpoint).
Then, all through the generator contract and the bundles' own configs:
- NFE sweep on the real test masks (170 slices): fm_cmr euler at NFE 1, 2, 5, 10, 20, midpoint at NFE 2, 10, 20, dopri5
  (adaptive), beside ddpm_cmr DDIM-50 and DDIM-10: seconds per slice and fidelity scored by the real-only segmenter
  (mask faithfulness, FD / KID on its features, diversity, SSIM to the real image of the same mask);
- utility: seg_utility synthetic-only and few10+syn on each generator's images of the same mask_generator masks,
  with real and few10 baselines, per patient volume on the 10 test patients;
- privacy: privacy_audit of each generator (white-box attacks through loss_at, reconstruction, leakage).
Writes bundles/fm_cmr/docs/benchmark.json, figures, and the tables in the fm_cmr and ddpm_cmr docs.

    python scripts/benchmark_fm_cmr.py --work runs/bench --threads 2
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from cmrsynth.benchmark import (REPO, audit_generator, comparison_table, draw_images, load_section, machine, parser,
                                prepared_acdc, replace_marked, sampler_sweep, score_fidelity, segmenter_utility, sweep_table,
                                train_segmenter, training_facts, write_benchmark)
from cmrsynth.bundle_run import run_bundle

BUNDLES = REPO / "bundles"
FM, DDPM = (BUNDLES / b for b in ("fm_cmr", "ddpm_cmr"))
TRAIN = ["common.yaml", "train.yaml"]
#: (bundle, sampler, steps) of the NFE sweep on the real test masks.
SWEEP = [("fm_cmr", "euler", n) for n in (1, 2, 5, 10, 20)] + [("fm_cmr", "midpoint", n) for n in (1, 5, 10)] + [
    ("fm_cmr", "dopri5", None), ("ddpm_cmr", "ddim", 50), ("ddpm_cmr", "ddim", 10)]


def _env(args) -> dict:
    return {"OMP_NUM_THREADS": str(args.threads)}


def train_fixed(bundle: str, data: Path, root: Path, epochs: int, args) -> dict:
    """Train a generator bundle for a fixed number of 200-step epochs (skipped when its final checkpoint exists)."""
    final = root / "models" / "checkpoint_final.pt"
    if not final.is_file():
        run_bundle(BUNDLES / bundle, TRAIN, root, {"dataset_dir": str(data), "max_epochs": epochs, "seed": args.seed,
                                                   "max_minutes": args.max_minutes, "progress_bar": False},
                   log=root / "train.log", env=_env(args))
    return {"planned_steps": epochs * 200, **training_facts(root)}


def fidelity(datalist: Path, real: Path, scorer: Path, out: Path, args) -> dict:
    """The real-only segmenter scores an image set against the real test slices."""
    return score_fidelity(datalist, real, scorer, out, args.seed, args.threads)


def sweep(work: Path, roots: dict, real: Path, scorer: Path, args) -> list[dict]:
    """Every (generator, sampler, steps) of SWEEP on the real test masks: time, NFE and fidelity."""
    return sampler_sweep(SWEEP, roots, real, scorer, work / "sweep", args.seed + 1, args.threads)


def synthetic_sets(work: Path, roots: dict, args) -> dict[str, Path]:
    """mask_generator masks (drawn once), then each image generator's images of them with its default sampler."""
    masks = work / "synthetic_fm" / "masks"
    if not (masks / "datalist.json").is_file():
        masks.parent.mkdir(parents=True, exist_ok=True)
        run_bundle(BUNDLES / "mask_generator", ["common.yaml", "inference.yaml"], roots["mask_generator"],
                   {"per_class": args.per_class, "output_dir": str(masks), "seed": args.seed + 1},
                   log=masks.parent / "masks.log", env=_env(args))
    return {b: draw_images(roots[b], masks / "datalist.json", "synthetic", work / "synthetic_fm" / b, args.seed + 1,
                           args.threads, b) for b in ("ddpm_cmr", "fm_cmr")}


def utility(work: Path, real: Path, synthetic: dict[str, Path], args) -> dict:
    """Segmenters on real, few10, and each generator's synthetic set alone and added to few10."""
    return segmenter_utility(work / "seg_utility_fm", real, synthetic, args.seg_steps, args.seed, args.threads)


def privacy(work: Path, roots: dict, real: Path, synthetic: dict[str, Path], scorer: Path, args) -> dict:
    """privacy_audit of each image generator, the same config with only the generator's bundle and root changed."""
    return {b: audit_generator(b, roots[b], real, synthetic[b], scorer, work / "privacy_fm" / b, args.threads) for b in ("ddpm_cmr", "fm_cmr")}


def figures(work: Path, real: Path, result: dict) -> None:
    """Generated (fm_cmr, ddpm_cmr) beside real images of the same test masks; fidelity and time against NFE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmrsynth.report import save_overlay_grid

    docs = FM / "docs"
    test = load_section(real, "test")
    picked = list(range(0, len(test), max(1, len(test) // 8)))[:8]
    fm_name, ddpm_name = (f"fm_cmr_{result['default_sampler']}", "ddpm_cmr_ddim50")
    rows = [[np.asanyarray(nib.load(work / "sweep" / n / "images" / f"syn{i:05d}.nii.gz").dataobj) for i in picked]
            for n in (fm_name, ddpm_name)]
    save_overlay_grid(rows[0] + rows[1] + [test[i]["array"] for i in picked], None, docs / "fm_vs_ddpm_vs_real.png",
                      [f"fm_cmr {result['default_sampler']}"] * len(picked) + ["ddpm_cmr DDIM-50"] * len(picked)
                      + [f"real {test[i]['group']}" for i in picked], ncols=len(picked))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for sampler, style in (("euler", "o-"), ("midpoint", "s-"), ("dopri5", "^"), ("ddim", "x--")):
        rows = [r for r in result["sweep"] if r["sampler"] == sampler]
        label = "ddpm_cmr DDIM" if sampler == "ddim" else f"fm_cmr {sampler}"
        for ax, key in zip(axes, ("lv_myo_rv_faithfulness", "fd_seg", "seconds_per_slice")):
            values = [np.mean(list(r["mask_faithfulness"].values())) if key.endswith("faithfulness") else r[key] for r in rows]
            ax.plot([r["nfe"] for r in rows], values, style, label=label)
    for ax, title in zip(axes, ("mask faithfulness (mean Dice)", "FD on segmenter features", "seconds per slice")):
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(docs / "nfe_sweep.png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.set_defaults(threads=2)
    p.add_argument("--epochs", type=int, default=33, help="200-step epochs of each image generator (6,600 steps)")
    p.add_argument("--mask-epochs", type=int, default=15, help="200-step epochs of mask_generator (3,000 steps)")
    p.add_argument("--max-minutes", type=float, default=60.0, help="wall-time safety net per generator")
    p.add_argument("--seg-steps", type=int, default=700, help="steps of every segmenter")
    p.add_argument("--per-class", type=int, default=40, help="mask_generator masks per (group, phase)")
    p.add_argument("--default-sampler", default="euler10", help="fm_cmr's sweep entry used for utility and privacy")
    args = p.parse_args()
    path = FM / "docs" / "benchmark.json"
    if args.stage == "render":
        render(json.loads(path.read_text()))
        return
    work = Path(args.work)
    data = prepared_acdc(work / "acdc64", 64)
    real = data / "datalist.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update({"bundle": "fm_cmr", "machine": machine(), "threads": args.threads, "seed": args.seed,
                   "data": "ACDC (../shared/data/acdc), 64x64 CPU preset, seed-0 split: train 50 / val 10 / test 10 patients",
                   "default_sampler": args.default_sampler, "segmenter_steps": args.seg_steps})
    roots = {b: work / b for b in ("mask_generator", "ddpm_cmr", "fm_cmr")}
    result["training"] = {b: train_fixed(b, data, roots[b], args.mask_epochs if b == "mask_generator" else args.epochs, args)
                          for b in ("mask_generator", "ddpm_cmr", "fm_cmr")}
    write_benchmark(path, result)
    scorer = work / "seg_utility_fm" / "real"
    result["utility"] = {"real": train_segmenter(scorer, [{"datalist": str(real), "key": "training"}], real, args.seg_steps, args.seed,
                                                 args.threads)}
    result["sweep"] = sweep(work, roots, real, scorer, args)
    write_benchmark(path, result)
    synthetic = synthetic_sets(work, roots, args)
    result["synthetic_sets"] = {b: json.loads(d.read_text())["summary"] for b, d in synthetic.items()}
    result["synthetic_fidelity"] = {b: fidelity(d, real, scorer, work / "synthetic_fm" / "fidelity" / b, args)
                                    for b, d in synthetic.items()}
    result["utility"].update(utility(work, real, synthetic, args))
    write_benchmark(path, result)
    result["privacy"] = privacy(work, roots, real, synthetic, scorer, args)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M")
    write_benchmark(path, result)
    figures(work, real, result)
    shutil.copy(work / "privacy_fm" / "fm_cmr" / "closest_synthetic_vs_train.png", FM / "docs" / "closest_fm_cmr.png")
    render(result)


def paper_table(result: dict) -> str:
    """The paper's comparison so far: DDPM and FM side by side (fidelity, utility, privacy, time)."""
    sweep = {f"{r['generator']}_{r['sampler']}{r['steps'] or ''}": r for r in result["sweep"]}
    pick = {"ddpm_cmr": sweep["ddpm_cmr_ddim50"], "fm_cmr": sweep[f"fm_cmr_{result['default_sampler']}"]}
    columns = {"ddpm_cmr": "ddpm_cmr (DDIM-50)", "fm_cmr": f"fm_cmr ({result['default_sampler']})"}
    steps = ("training steps", lambda b: f"{result['training'][b]['iteration']}")
    return comparison_table(columns, [steps], pick, result["utility"], result.get("privacy"))


def render(result: dict) -> None:
    """Write the tables into the fm_cmr and ddpm_cmr docs."""
    t = result["training"]
    facts = (f"Measured on {result['machine']['date']}, {result['data']}; {result['machine']['cores']}-core CPU, "
             f"{result['threads']} torch threads. Training: " + "; ".join(
                 f"{b} {t[b]['iteration']} steps in {t[b]['training_wall_seconds'] / 60:.0f} min" for b in t)
             + f". Segmenters: {result['segmenter_steps']} steps each, scored per patient volume on the 10 test patients.")
    n = result["sweep"][0]["n_synthetic"]
    text = "\n\n".join([facts, paper_table(result), f"NFE sweep on the {n} real test masks (batch 16):", sweep_table(result["sweep"])])
    replace_marked(FM / "docs" / "README.md", "results", text)
    replace_marked(REPO / "README.md", "fm-stage", stage_cell(result), inline=True)


def stage_cell(result: dict) -> str:
    """One line for the README's stage table: the paper's comparison so far in numbers."""
    sweep = {f"{r['generator']}_{r['sampler']}{r['steps'] or ''}": r for r in result["sweep"]}
    fm, ddpm = sweep[f"fm_cmr_{result['default_sampler']}"], sweep["ddpm_cmr_ddim50"]
    u = result["utility"]
    lv = lambda mode: u[mode]["summary"]["ED/dice_lv"]["mean"]  # noqa: E731
    faith = lambda r: np.mean(list(r["mask_faithfulness"].values()))  # noqa: E731
    return (f"[CPU benchmark](bundles/fm_cmr/docs/README.md#performance), both {result['training']['fm_cmr']['iteration']} steps: "
            f"NFE {fm['nfe']} vs DDIM-{ddpm['nfe']}, {fm['seconds_per_slice']:.3f} vs {ddpm['seconds_per_slice']:.3f} s / slice; "
            f"mask faithfulness (mean Dice) {faith(fm):.3f} vs {faith(ddpm):.3f}; synthetic-only LV Dice (ED) "
            f"{lv('synthetic (fm_cmr)'):.3f} vs {lv('synthetic (ddpm_cmr)'):.3f}")


if __name__ == "__main__":
    main()

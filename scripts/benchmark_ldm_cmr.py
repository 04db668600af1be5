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
"""Benchmark of ldm_cmr beside ddpm_cmr and fm_cmr on real ACDC (CPU preset, 64x64): the paper's three generators.

ldm_cmr trains in two stages on the 50 train patients at fixed steps (autoencoder, then the latent denoiser), both
within 60 CPU-minutes together. ddpm_cmr, fm_cmr, mask_generator and the real-only segmenter are the ones
scripts/benchmark_fm_cmr.py trained in --work (same split, same masks); they are reused, not retrained. Then, all
through the generator contract and the bundles' own configs:
- the autoencoder: PSNR / SSIM of reconstructed validation and test slices, and the real-only segmenter's Dice on
  the reconstructed test slices against their true masks (reconstruct.yaml, then seg_utility's fidelity.yaml);
- sampling cost and fidelity on the 170 real test masks, in this run for all three generators: ldm_cmr DDIM-50 and
  DDIM-10, ddpm_cmr DDIM-50 and DDIM-10, fm_cmr euler-10;
- utility: seg_utility synthetic-only and few10+syn on ldm_cmr's images of the same mask_generator masks;
- privacy: privacy_audit of ldm_cmr (white-box attacks in latent space, reconstruction and leakage in pixels).
Writes bundles/ldm_cmr/docs/benchmark.json, figures, the ldm_cmr docs' results and the three-generator table in the
README and in each generator's docs.

    python scripts/benchmark_fm_cmr.py --work runs/bench      # first, if runs/bench lacks its generators
    python scripts/benchmark_ldm_cmr.py --work runs/bench --threads 2
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from cmrsynth.benchmark import (REPO, audit_generator, comparison_table, draw_images, load_section, machine, parser,
                                log_lines, prepared_acdc, replace_marked, sampler_sweep, score_fidelity, segmenter_utility,
                                sweep_table, training_facts, write_benchmark)
from cmrsynth.bundle_run import run_bundle, trainer_progress

BUNDLES = REPO / "bundles"
LDM, FM, DDPM = (BUNDLES / b for b in ("ldm_cmr", "fm_cmr", "ddpm_cmr"))
#: ldm_cmr's validation-best EMA weights (best_ema.pt of the same run), evaluated beside its final weights.
BEST = "ldm_cmr_bestval"
GENERATORS = ("ddpm_cmr", "fm_cmr", "ldm_cmr", BEST)
BUNDLE_OF = {BEST: "ldm_cmr"}
#: each generator's default sampler, the setting its synthetic set, utility and privacy rows use.
DEFAULT = {"ddpm_cmr": ("ddim", 50), "fm_cmr": ("euler", 10), "ldm_cmr": ("ddim", 50), BEST: ("ddim", 50)}
#: (generator, sampler, steps) timed and scored on the real test masks in this run.
SWEEP = [("ldm_cmr", "ddim", 50), ("ldm_cmr", "ddim", 10), ("ddpm_cmr", "ddim", 50), ("ddpm_cmr", "ddim", 10), ("fm_cmr", "euler", 10),
         (BEST, "ddim", 50), (BEST, "ddim", 10)]


def _env(args) -> dict:
    return {"OMP_NUM_THREADS": str(args.threads)}


def train_autoencoder(root: Path, data: Path, args) -> dict:
    """Stage 1 for a fixed number of 200-step epochs (skipped when its final checkpoint exists)."""
    final = root / "models" / "autoencoder" / "checkpoint_final.pt"
    log = root / "train_autoencoder.log"
    if not final.is_file():
        run_bundle(LDM, ["common.yaml", "train_autoencoder.yaml"], root, {"dataset_dir": str(data), "max_epochs": args.ae_epochs,
                   "seed": args.seed, "max_minutes": args.ae_max_minutes, "progress_bar": False}, log=log, env=_env(args))
    curve = [{"epoch": int(m.group(1)), "val_l1": float(m.group(2)), "val_psnr": float(m.group(3)), "val_ssim": float(m.group(4))}
             for m in re.finditer(r"Epoch\[(\d+)\] Metrics -- val_l1: ([\d.]+) val_psnr: ([\d.]+) val_ssim: ([\d.]+)", log.read_text())]
    stamps, progress = [t for t, _ in log_lines(log, r"(Epoch: |Epoch\[)")], trainer_progress(final)
    wall = (stamps[-1] - stamps[0]).total_seconds()
    return {"planned_steps": args.ae_epochs * 200, **progress, "training_wall_seconds": wall,
            "seconds_per_step": wall / progress["iteration"], "validation_curve": curve}


def train_diffusion(root: Path, data: Path, args) -> dict:
    """Stage 2 for a fixed number of 200-step epochs (skipped when its final checkpoint exists)."""
    if not (root / "models" / "checkpoint_final.pt").is_file():
        run_bundle(LDM, ["common.yaml", "train.yaml", "train_diffusion.yaml"], root, {"dataset_dir": str(data), "max_epochs": args.epochs,
                   "seed": args.seed, "max_minutes": args.max_minutes, "progress_bar": False}, log=root / "train.log", env=_env(args))
    return {"planned_steps": args.epochs * 200, **training_facts(root)}


def best_val_root(root: Path, out: Path) -> Path:
    """A run folder whose checkpoint_final.pt is ``root``'s best_ema.pt (EMA weights at the lowest validation loss,
    with their codec), so every bundle config and the audit load them as they load final weights."""
    final = out / "models" / "checkpoint_final.pt"
    if not final.is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "models" / "best_ema.pt", final)
    return out


def reconstruction(root: Path, real: Path, scorer: Path, args) -> dict:
    """PSNR / SSIM of the autoencoder on validation and test slices; the segmenter's Dice on the test reconstructions."""
    out = {}
    for key in ("validation", "test"):
        folder = root / "eval" / f"reconstruction_{key}"
        if not (folder / "datalist.json").is_file():
            run_bundle(LDM, ["common.yaml", "reconstruct.yaml"], root, {"real_datalist": str(real), "eval_key": key},
                       log=root / f"reconstruct_{key}.log", env=_env(args))
        out[key] = json.loads((folder / "datalist.json").read_text())["summary"]
    test = root / "eval" / "reconstruction_test" / "datalist.json"
    out["test"]["segmenter"] = score_fidelity(test, real, scorer, root / "eval" / "reconstruction_test_fidelity", args.seed, args.threads)
    return out


def sweep(work: Path, roots: dict, real: Path, scorer: Path, args) -> list[dict]:
    """Every (generator, sampler, steps) of SWEEP on the real test masks: time, NFE and fidelity, in this run."""
    return sampler_sweep(SWEEP, roots, real, scorer, work / "sweep_ldm", args.seed + 1, args.threads, BUNDLE_OF)


def privacy(work: Path, roots: dict, real: Path, synthetic: dict[str, Path], scorer: Path, args) -> dict:
    """privacy_audit of each generator (ddpm_cmr's and fm_cmr's from benchmark_fm_cmr.py's run when present)."""
    return {b: audit_generator(BUNDLE_OF.get(b, b), roots[b], real, synthetic[b], scorer, work / "privacy_fm" / b, args.threads)
            for b in GENERATORS}


def figures(work: Path, real: Path, result: dict) -> None:
    """The three generators' images of the same real test masks beside the real images; the autoencoder's
    reconstructions; the closest synthetic-to-training pairs of ldm_cmr."""
    from cmrsynth.report import save_overlay_grid

    docs = LDM / "docs"
    test = load_section(real, "test")
    picked = list(range(0, len(test), max(1, len(test) // 8)))[:8]
    rows, titles = [], []
    for b in GENERATORS:
        sampler, steps = DEFAULT[b]
        folder = work / "sweep_ldm" / f"{b}_{sampler}{steps}" / "images"
        rows += [np.asanyarray(nib.load(folder / f"syn{i:05d}.nii.gz").dataobj) for i in picked]
        titles += [f"{b} {sampler}-{steps}"] * len(picked)
    save_overlay_grid(rows + [test[i]["array"] for i in picked], None, docs / "ldm_vs_fm_vs_ddpm_vs_real.png",
                      titles + [f"real {test[i]['group']}" for i in picked], ncols=len(picked))
    shutil.copy(work / "ldm_cmr" / "eval" / "reconstruction_test" / "reconstructions.png", docs / "autoencoder_reconstructions.png")
    shutil.copy(work / "privacy_fm" / "ldm_cmr" / "closest_synthetic_vs_train.png", docs / "closest_ldm_cmr.png")


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.set_defaults(threads=2)
    p.add_argument("--ae-epochs", type=int, default=10, help="200-step epochs of the autoencoder (2,000 steps)")
    p.add_argument("--epochs", type=int, default=30, help="200-step epochs of the latent denoiser (6,000 steps)")
    p.add_argument("--ae-max-minutes", type=float, default=30.0, help="wall-time safety net of stage 1")
    p.add_argument("--max-minutes", type=float, default=30.0, help="wall-time safety net of stage 2")
    p.add_argument("--seg-steps", type=int, default=700, help="steps of every segmenter (as benchmark_fm_cmr.py)")
    args = p.parse_args()
    path = LDM / "docs" / "benchmark.json"
    if args.stage == "render":
        render(json.loads(path.read_text()))
        return
    work = Path(args.work)
    data = prepared_acdc(work / "acdc64", 64)
    real = data / "datalist.json"
    roots = {b: work / b for b in ("mask_generator", *GENERATORS)}
    scorer = work / "seg_utility_fm" / "real"
    masks = work / "synthetic_fm" / "masks" / "datalist.json"
    for needed in (roots["ddpm_cmr"] / "models" / "checkpoint_final.pt", roots["fm_cmr"] / "models" / "checkpoint_final.pt",
                   scorer / "models" / "checkpoint_final.pt", masks):
        if not needed.is_file():
            raise SystemExit(f"{needed} not found: run scripts/benchmark_fm_cmr.py --work {work} first")
    fm_result = json.loads((FM / "docs" / "benchmark.json").read_text())
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update({"bundle": "ldm_cmr", "machine": machine(), "threads": args.threads, "seed": args.seed,
                   "data": "ACDC (../shared/data/acdc), 64x64 CPU preset, seed-0 split: train 50 / val 10 / test 10 patients",
                   "segmenter_steps": args.seg_steps, "defaults": {b: f"{s}-{n}" for b, (s, n) in DEFAULT.items()}})
    stage1 = train_autoencoder(roots["ldm_cmr"], data, args)
    stage2 = train_diffusion(roots["ldm_cmr"], data, args)
    result["training"] = {"autoencoder": stage1, "diffusion": stage2, "budget_minutes": 60,
                          "wall_minutes": round((stage1["training_wall_seconds"] + stage2["training_wall_seconds"]) / 60, 1),
                          "ddpm_cmr": fm_result["training"]["ddpm_cmr"], "fm_cmr": fm_result["training"]["fm_cmr"]}
    write_benchmark(path, result)
    result["reconstruction"] = reconstruction(roots["ldm_cmr"], real, scorer, args)
    roots[BEST] = best_val_root(roots["ldm_cmr"], work / BEST)
    result["sweep"] = sweep(work, roots, real, scorer, args)
    write_benchmark(path, result)
    synthetic = {b: draw_images(roots[b], masks, "synthetic", work / "synthetic_fm" / b, args.seed + 1, args.threads, BUNDLE_OF.get(b, b))
                 for b in GENERATORS}
    result["synthetic_sets"] = {b: json.loads(d.read_text())["summary"] for b, d in synthetic.items()}
    result["synthetic_fidelity"] = {b: score_fidelity(d, real, scorer, work / "synthetic_fm" / "fidelity" / b, args.seed, args.threads)
                                    for b, d in synthetic.items()}
    result["utility"] = segmenter_utility(work / "seg_utility_fm", real, synthetic, args.seg_steps, args.seed, args.threads)
    write_benchmark(path, result)
    result["privacy"] = privacy(work, roots, real, synthetic, scorer, args)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M")
    write_benchmark(path, result)
    figures(work, real, result)
    render(result)


def _pick(result: dict) -> dict:
    """Each generator's sweep row at its default sampler."""
    rows = {(r["generator"], r["sampler"], r["steps"]): r for r in result["sweep"]}
    return {b: rows[(b, *DEFAULT[b])] for b in GENERATORS}


def _best_epoch(result: dict) -> int:
    curve = result["training"]["diffusion"]["validation_curve"]
    return min(curve, key=lambda c: c["val_mse_ema"])["epoch"]


def _training_cell(result: dict, b: str) -> str:
    t = result["training"]
    if b == BEST:
        return (f"the same run's EMA at denoiser step {_best_epoch(result) * 200} (best_ema.pt, lowest validation loss; "
                "the default recipe stops there)")
    if b != "ldm_cmr":
        return f"{t[b]['iteration']} steps, {t[b]['training_wall_seconds'] / 60:.0f} min"
    ae, dm = t["autoencoder"], t["diffusion"]
    return (f"autoencoder {ae['iteration']} + denoiser {dm['iteration']} steps, "
            f"{ae['training_wall_seconds'] / 60:.0f} + {dm['training_wall_seconds'] / 60:.0f} min")


def paper_table(result: dict) -> str:
    """The paper's comparison, measured here: DDPM, FM and LDM side by side on one split and one set of masks."""
    pick = _pick(result)
    columns = {b: f"{BUNDLE_OF.get(b, b)} ({s}-{n})" for b, (s, n) in DEFAULT.items()}
    columns["ldm_cmr"] = f"ldm_cmr, final weights ({DEFAULT['ldm_cmr'][0]}-{DEFAULT['ldm_cmr'][1]})"
    columns[BEST] = f"ldm_cmr, validation-best weights ({DEFAULT[BEST][0]}-{DEFAULT[BEST][1]})"
    training = ("training (CPU, 2 threads)", lambda b: _training_cell(result, b))
    table = comparison_table(columns, [training], pick, result["utility"], result.get("privacy"))
    ceiling = ("Real test images scored by the same segmenter (the faithfulness ceiling): LV / MYO / RV "
               + " / ".join(f"{pick['ldm_cmr']['real_dice'][k]:.3f}" for k in ("lv", "myo", "rv")) + ".")
    source = (f"Measured by scripts/benchmark_ldm_cmr.py on {result['machine']['date']} ({result['data']}); ddpm_cmr and fm_cmr weights, "
              "generated masks and segmenters from scripts/benchmark_fm_cmr.py on the same split; the sampling times of all three "
              "in one run.")
    return "\n".join([source, "", table, ceiling])


def reconstruction_table(result: dict) -> str:
    """What the autoencoder keeps: PSNR, SSIM and the segmenter's Dice on reconstructions."""
    r = result["reconstruction"]
    seg = r["test"]["segmenter"]
    lines = ["| slices | PSNR dB (mean ± SD) | SSIM (mean ± SD) | segmenter Dice LV / MYO / RV on reconstructions (real images) |",
             "|---|---|---|---|"]
    for key in ("validation", "test"):
        s = r[key]
        dice = (" / ".join(f"{seg['mask_faithfulness'][k]:.3f}" for k in ("lv", "myo", "rv")) + " (" +
                " / ".join(f"{seg['real_dice'][k]:.3f}" for k in ("lv", "myo", "rv")) + ")") if key == "test" else "not scored"
        lines.append(f"| {key} ({s['slices']}) | {s['psnr_mean']:.2f} ± {s['psnr_std']:.2f} | {s['ssim_mean']:.3f} ± {s['ssim_std']:.3f} | {dice} |")
    return "\n".join(lines)


def render(result: dict) -> None:
    """Write the results into the ldm_cmr docs, and the three-generator table into the README and each generator's docs."""
    t = result["training"]
    ae, dm = t["autoencoder"], t["diffusion"]
    curve = ", ".join(f"{c['epoch']}: {c['val_psnr']:.2f} dB / {c['val_ssim']:.3f}" for c in ae["validation_curve"])
    dcurve = ", ".join(f"{c['epoch']}: {c['val_mse_ema']:.4f}" for c in dm["validation_curve"])
    facts = (f"Measured on {result['machine']['date']}, {result['data']}; {result['machine']['cores']}-core CPU, {result['threads']} torch threads. "
             f"Budget: 60 CPU-minutes for both stages; spent {t['wall_minutes']:.0f} min wall: autoencoder {ae['iteration']} steps "
             f"({ae['training_wall_seconds'] / 60:.1f} min, {ae['seconds_per_step']:.2f} s/step), latent denoiser {dm['iteration']} steps "
             f"({dm['training_wall_seconds'] / 60:.1f} min, {dm['seconds_per_step']:.2f} s/step). Autoencoder validation PSNR / SSIM by epoch: "
             f"{curve}. Denoiser validation MSE (EMA, latent v-target) by epoch: {dcurve}. Segmenters: {result['segmenter_steps']} steps each, "
             "scored per patient volume on the 10 test patients.")
    text = "\n\n".join([facts, "The autoencoder:", reconstruction_table(result), "The three generators:", paper_table(result),
                          f"Sampling on the {result['sweep'][0]['n_synthetic']} real test masks (batch 16), all in this run:",
                          sweep_table(result["sweep"])])
    replace_marked(LDM / "docs" / "README.md", "results", text)
    for doc in (DDPM / "docs" / "README.md", FM / "docs" / "README.md", REPO / "README.md"):
        replace_marked(doc, "comparison", paper_table(result))
    pick = _pick(result)
    u = result["utility"]
    auc = lambda b: max(m["auc"]["value"] for m in result["privacy"][b]["membership"].values())  # noqa: E731
    cell = (f"[CPU benchmark](bundles/ldm_cmr/docs/README.md#performance): autoencoder PSNR {result['reconstruction']['test']['psnr_mean']:.1f} dB, "
            f"DDIM-50 {pick['ldm_cmr']['seconds_per_slice']:.3f} s / slice (ddpm_cmr {pick['ddpm_cmr']['seconds_per_slice']:.3f}); "
            f"synthetic-only LV Dice (ED) {u['synthetic (ldm_cmr)']['summary']['ED/dice_lv']['mean']:.3f}; the denoiser memorises past "
            f"{_best_epoch(result) * 200} steps (attack AUC {auc('ldm_cmr'):.2f} at {t['diffusion']['iteration']}, {auc(BEST):.2f} at "
            f"{_best_epoch(result) * 200}, now the default)")
    replace_marked(REPO / "README.md", "ldm-stage", cell, inline=True)


if __name__ == "__main__":
    main()

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
"""Benchmark of privacy by default on real ACDC (CPU preset, 64x64): one row per generator recipe, each audited by
privacy_audit (members: the 50 train patients; non-members: the 20 val + test patients; uncalibrated and calibrated
white-box attacks per patient and per slice, the black-box reconstruction attack, near copies before and after the
release gate) beside the utility (seg_utility synthetic-only Dice, 700 steps) and fidelity of its images drawn on the
same mask_generator masks. Rows: ddpm_cmr's old default (no augmentation, final weights), the new default
(augmentation, validation-best EMA), DP-SGD from scratch and after public phantom pre-training (eps 10, delta 1e-5,
the same 20 passes), untrained (sanity: must not be caught), overfit on 5 patients (sanity: must be caught), and the
mask_generator audited on real masks; fm_cmr, ldm_cmr and the mask generator under the new default recipe as the ACDC
cpu64 pipeline trained them (runs/acdc_cpu64, the same split). Generators are trained by scripts/train_privacy_benchmark_generators.sh
(fixed step counts; a rerun only audits); the old default and the segmenter protocol come from the ddpm_cmr and
seg_utility benchmarks.

    python scripts/benchmark_privacy_audit.py --work runs/bench --seg-work runs/bench_seg13
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from cmrsynth.benchmark import (REPO, SEG_UTILITY, dice_cells, draw_images, machine, parser, prepared_acdc, replace_marked,
                                score_fidelity, train_segmenter, training_facts, untrained_generator, write_benchmark)
from cmrsynth.audit import strongest
from cmrsynth.bundle_run import run_bundle
from cmrsynth.zoo import sha256

BUNDLE = REPO / "bundles" / "privacy_audit"
DDPM = REPO / "bundles" / "ddpm_cmr"
SEGMENTER_STEPS = 700  # the seg_utility benchmark's fixed protocol, so the old default's segmenter is reused
PIPELINE = "../acdc_cpu64"  # the ACDC cpu64 pipeline run, relative to the work folder (runs/bench)


@dataclass
class Recipe:
    """One audited generator: its run folder under the work folder, the weights audited and sampled, and how."""

    label: str
    root: str
    checkpoint: str = "best_ema.pt"
    bundle: str = "ddpm_cmr"
    members: str = "datalist.json"  # the prepared datalist whose training section trained it
    utility: bool = True  # draw images on the benchmark masks; segmenter and fidelity
    dp: bool = False
    pipeline_stages: tuple[str, ...] = ()  # trained by the ACDC cpu64 pipeline: the stages whose records time it
    synthetic: str | None = None  # a mask generator's own masks (relative to the work folder), audited for near copies
    audited: bool = True  # False: a utility reference only (its images and segmenter, no privacy audit)
    generator_overrides: dict = field(default_factory=dict)  # how it samples when not its bundle's default (a student)


RECIPES = {
    "old_default": Recipe("ddpm_cmr, old default (no augmentation, final weights)", "ddpm_cmr", "checkpoint_final.pt"),
    "new_default": Recipe("ddpm_cmr, previous default (augmentation, validation-best EMA, 6,600 steps from scratch)",
                          "ddpm_cmr_private"),
    # public pre-training without DP: the shipped phantom weights, then few passes over the private patients
    "public_6": Recipe("ddpm_cmr, default since 0.7.0: phantom weights + 1,200 private steps (augmentation, validation-best EMA)",
                       "ddpm_cmr_pre6"),
    "fm_public_6": Recipe("fm_cmr, phantom weights + 1,200 private steps (augmentation, validation-best EMA)", "fm_cmr_pre6",
                          bundle="fm_cmr"),
    "fm_public_3": Recipe("fm_cmr, phantom weights + 600 private steps (augmentation, validation-best EMA)", "fm_cmr_pre3",
                          bundle="fm_cmr"),
    # ldm_cmr: the phantom autoencoder as shipped (no private data through it) and its phantom latent denoiser + 6 x 200
    "ldm_public_6": Recipe("ldm_cmr, phantom autoencoder as shipped, phantom denoiser + 1,200 private steps (augmentation, "
                           "validation-best EMA)", "ldm_cmr_pre6", bundle="ldm_cmr"),
    "ldm_public_3": Recipe("ldm_cmr, phantom autoencoder as shipped, phantom denoiser + 600 private steps (augmentation, "
                           "validation-best EMA)", "ldm_cmr_pre3", bundle="ldm_cmr"),
    # the old recipe retrained when the first mask set's weights were gone: the utility reference on a later mask set
    "old_rerun": Recipe("ddpm_cmr, old default retrained (no augmentation, final weights; utility reference)", "ddpm_cmr_old",
                        "checkpoint_final.pt", audited=False),
    "dp_scratch": Recipe("DP-SGD ddpm_cmr from scratch", "ddpm_cmr_dp_scratch", dp=True),
    "dp_pretrained": Recipe("DP-SGD ddpm_cmr after phantom pre-training", "ddpm_cmr_dp_pretrained", dp=True),
    "untrained": Recipe("untrained ddpm_cmr (sanity: must not be caught)", "ddpm_cmr_untrained", "checkpoint_final.pt"),
    "overfit": Recipe("ddpm_cmr overfit on 5 patients (sanity: must be caught)", "ddpm_cmr_overfit5", "checkpoint_final.pt",
                      members="datalist_5patients.json", utility=False),
    "mask_generator": Recipe("mask_generator (validation-best EMA, the inference default)", "mask_generator_signed_distance",
                             bundle="mask_generator", utility=False),
    # the other generators' new defaults, as `cmr-synth run --preset cpu64` trained them on the same split
    "fm_new_default": Recipe("fm_cmr, new default (augmentation, validation-best EMA; the cpu64 pipeline's)",
                             f"{PIPELINE}/fm_cmr", bundle="fm_cmr", pipeline_stages=("fm_cmr.train",)),
    "ldm_new_default": Recipe("ldm_cmr, new default (augmentation, validation-best EMA; the cpu64 pipeline's)",
                              f"{PIPELINE}/ldm_cmr", bundle="ldm_cmr",
                              pipeline_stages=("ldm_cmr.train.autoencoder", "ldm_cmr.train.latent")),
    "mask_new_default": Recipe("mask_generator, new default (augmentation, validation-best EMA; the cpu64 pipeline's)",
                               f"{PIPELINE}/mask_generator", bundle="mask_generator", utility=False,
                               pipeline_stages=("mask_generator.train",),
                               synthetic=f"{PIPELINE}/mask_generator/eval/masks/datalist.json"),
}


def few_patient_datalist(data: Path, k: int) -> Path:
    """The prepared datalist with its training section cut to k patients (one per group first), in the same folder."""
    d = json.loads((data / "datalist.json").read_text())
    chosen, seen = [], set()
    for e in d["training"]:
        if e["group"] not in seen and len(chosen) < k:
            chosen.append(e["patient"])
            seen.add(e["group"])
    d["training"] = [e for e in d["training"] if e["patient"] in chosen]
    path = data / f"datalist_{k}patients.json"
    path.write_text(json.dumps(d))
    return path


def dp_training_facts(root: Path, delta: float) -> dict:
    """How a DP-SGD run trained (train.log) and what it spent (the accountant history in its final checkpoint)."""
    import torch
    from monai.bundle import ConfigParser

    from cmrsynth.dp import budget_spent

    dp = ConfigParser.load_config_file(str(DDPM / "configs" / "dp_train.yaml"))
    state = torch.load(root / "models" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    if "dp" not in state:
        raise SystemExit(f"{root}: the checkpoint holds no DP-SGD accountant (did training run with dp_train.yaml?)")
    return {"max_grad_norm": dp["dp_max_grad_norm"], **training_facts(root), **budget_spent(state["dp"], delta)}


def adopt_queue_log(work: Path, folder: str) -> bool:
    """Give a run folder the log scripts/train_privacy_benchmark_generators.sh wrote beside it (``<folder>.train.log``)
    as its ``train.log``, which ``training_facts`` reads, unless it has one; whether it has one now."""
    log, queue_log = work / folder / "train.log", work / f"{folder}.train.log"
    if queue_log.is_file() and not log.is_file():
        shutil.copy(queue_log, log)
    return log.is_file()


def pipeline_training_facts(root: Path, stages: tuple[str, ...]) -> dict:
    """Steps and wall time from the pipeline's stage records (each holds its trainer's final epoch and iteration; its
    logs hold every attempt)."""
    records = [json.loads((root.parent / "stages" / f"{s}.json").read_text()) for s in stages]
    seconds = sum(r["seconds"] for r in records)
    # ldm_cmr trains in two stages (autoencoder, latent denoiser): its steps are both stages' together
    progress = {"epoch": records[-1]["result"]["epoch"], "iteration": sum(r["result"]["iteration"] for r in records)}
    # threads: the pipeline sets none, so torch used every core of this 2-core machine
    return {**progress, "training_wall_seconds": seconds, "threads": 2, "trained_by": f"cmr-synth run --preset cpu64 ({', '.join(stages)})",
            "seconds_per_step": seconds / max(progress["iteration"], 1)}


def audit(work: Path, recipe: Recipe, name: str, data: Path, synthetic: Path | None, encoder: Path, threads: int,
          slices_per_patient: int, seed: int = 0) -> dict:
    """audit.yaml on one generator (skipped when its audit.json exists); the per-sample leakage list stays behind."""
    out = work / "privacy_audit" / name
    if not (out / "audit.json").is_file():
        overrides = {"generator_bundle": str(REPO / "bundles" / recipe.bundle), "generator_root": str(work / recipe.root),
                     "generator_checkpoint": recipe.checkpoint, "real_datalist": str(data / recipe.members),
                     "output_dir": str(out), "slices_per_patient": slices_per_patient, "seed": seed}
        if recipe.generator_overrides:
            overrides["generator_overrides"] = recipe.generator_overrides
        if synthetic is not None:
            overrides["synthetic_datalist"] = str(synthetic)
            if recipe.bundle != "mask_generator":
                overrides.update(feature_encoder_root=str(encoder), feature_encoder_bundle=str(SEG_UTILITY))
        if recipe.bundle == "mask_generator":
            overrides["synthetic_key"] = "synthetic"
        run_bundle(BUNDLE, ["audit.yaml"], work / "privacy_audit", overrides, log=work / "privacy_audit" / f"{name}.log",
                   env={"OMP_NUM_THREADS": str(threads)})
    result = json.loads((out / "audit.json").read_text())
    result.get("leakage", {}).pop("synthetic_to_train", None)
    return result


def release_counts(synthetic: Path, real: Path) -> dict:
    """The release gate on a synthetic set: how many slices it removes, and why (each reason counted once per slice)."""
    from cmrsynth.audit import release

    record = release(synthetic, real, synthetic.with_name("datalist_released.json"))
    reasons = {"pixel_near_copy": "closer to a training slice", "mask_near_copy": "its mask is closer",
               "member_mask": "drawn from a training patient"}
    return {"kept": record["kept"], "removed": len(record["removed"]),
            **{k: sum(text in r["reason"] for r in record["removed"]) for k, text in reasons.items()}}


def evaluate_images(work: Path, seg_work: Path, key: str, recipe: Recipe, masks: Path, real: Path, seed: int,
                    threads: int) -> dict:
    """Images of a recipe drawn by its bundle's default sampler on the benchmark masks; a segmenter trained on them alone
    (seg_utility protocol, real test patients) and their fidelity scored by the real-only segmenter."""
    reused = {"old_default": ("images", "synthetic"), "untrained": ("untrained", "synthetic-untrained")}
    if key in reused:  # the seg_utility benchmark's own images and segmenter: the same weights, masks and protocol
        images = seg_work / "synthetic" / reused[key][0] / "datalist.json"
        seg_root = seg_work / "seg_utility" / reused[key][1]
    else:
        images = draw_images(work / recipe.root, masks, "synthetic", work / "synthetic12" / key, seed + 1, threads,
                             recipe.bundle, {"ckpt_path": str(work / recipe.root / "models" / recipe.checkpoint)})
        seg_root = work / "seg12" / key
    segmenter = train_segmenter(seg_root, [{"datalist": str(images), "key": "training"}], real, SEGMENTER_STEPS, seed, threads)
    scorer = seg_work / "seg_utility" / "real"
    fidelity = score_fidelity(images, real, scorer, work / "fidelity12" / key, seed, threads)
    return {"images": str(images), "segmenter": segmenter, "fidelity": fidelity, "release_gate": release_counts(images, real)}


def interval(m: dict, key: str = "auc", digits: int = 2) -> str:
    return f"{m[key]['value']:.{digits}f} [{m[key]['ci95'][0]:.{digits}f}, {m[key]['ci95'][1]:.{digits}f}]"


def strongest_of_kind(table: dict, calibrated: bool) -> tuple[str, dict]:
    """``audit.strongest`` among the calibrated (``_cal``) or the uncalibrated attacks of a table."""
    return strongest({n: m for n, m in table.items() if n.endswith("_cal") == calibrated})


def privacy_table(rows: dict) -> str:
    """One line per recipe: strongest uncalibrated and calibrated attack per patient and per slice, reconstruction
    attack, epsilon, near copies and what the gate removed."""
    lines = ["| recipe | ε (δ = 1e-5) | strongest attack per patient: AUC [95 % CI], TPR at 1 % FPR | calibrated, per patient | "
             "strongest attack per slice: AUC [95 % CI], TPR at 1 % / 0.1 % FPR | calibrated, per slice | "
             "strongest per slice, test patients alone as non-members | reconstruction (black-box): AUC [95 % CI] | "
             "near copies pixel / feature / mask | removed by the release gate |", "|---" * 10 + "|"]
    for row in (r for r in rows.values() if "audit" in r):
        a = row["audit"]
        cells = []
        for table, slices in (("membership", False), ("membership_slices", True)):
            for calibrated in (False, True):
                name, m = strongest_of_kind(a[table], calibrated)
                tpr = (f"{m['tpr_at_1pct_fpr']['value']:.3f} / {m['tpr_at_0.1pct_fpr']['value']:.3f}" if slices
                       else f"{m['tpr_at_1pct_fpr']['value']:.2f}")
                cells.append(f"{name}: {interval(m)}, {tpr}")
        test = a.get("test_non_members_only", {}).get("membership_slices")
        if test:
            name, m = strongest(test)
            cells.append(f"{name}: {interval(m)}, {m['tpr_at_1pct_fpr']['value']:.3f}")
        else:
            cells.append("-")
        reconstruction = a.get("reconstruction", {}).get("membership")
        rec = "-"
        if reconstruction:
            rec_name, rec_auc = strongest(reconstruction)
            rec = f"{rec_name}: {interval(rec_auc)}"
        leak = a.get("leakage", {})
        copies = " / ".join(f"{leak[k]['near_copies']} of {leak[k]['synthetic']}" if k in leak else "-" for k in ("pixel", "feature", "masks"))
        gate = row.get("images", {}).get("release_gate")
        gate = f"{gate['removed']} (pixel {gate['pixel_near_copy']}, mask {gate['mask_near_copy']})" if gate else "-"
        eps = f"{row['dp_training']['epsilon']:.2f}" if "dp_training" in row else "-"
        lines.append(f"| {row['label']} | {eps} | {' | '.join(cells)} | {rec} | {copies} | {gate} |")
    return "\n".join(lines)


def utility_table(rows: dict) -> str:
    """One line per recipe with images: synthetic-only segmenter Dice per structure and phase, faithfulness, FD / KID."""
    lines = ["| recipe | synthetic-only Dice LV ED / ES | MYO ED / ES | RV ED / ES | faithfulness Dice LV / MYO / RV | "
             "FD x100 / KID x10^4 (segmenter features) |", "|---" * 6 + "|"]
    for row in rows.values():
        if "images" not in row:
            continue
        summary, f = row["images"]["segmenter"]["summary"], row["images"]["fidelity"]
        faith = " / ".join(f"{f['mask_faithfulness'][k]:.3f}" for k in ("lv", "myo", "rv"))
        lines.append(f"| {row['label']} | {dice_cells(summary, 'lv')} | {dice_cells(summary, 'myo')} | {dice_cells(summary, 'rv')} | "
                     f"{faith} | {100 * f['fd_seg']:.2f} / {1e4 * f['kid_seg']:.2f} |")
    return "\n".join(lines)


def results_markdown(result: dict) -> str:
    """The docs section: setup, the two tables, the aims, then each recipe's full report."""
    from cmrsynth.audit import report_markdown

    order = [k for k in RECIPES if k in result["recipes"]] + [k for k in result["recipes"] if k not in RECIPES]
    rows = {key: result["recipes"][key] for key in order}
    measured = {key: row.get("measured") or {"date": result["machine"]["date"], "threads": result["threads"]}
                for key, row in rows.items()}
    dates = sorted({m["date"] for m in measured.values()})
    parts = [f"Measured on {' and '.join(dates)}, {result['data']}; "
             f"{result['slices_per_patient']} slices per patient audited; segmenters {SEGMENTER_STEPS} steps on images drawn "
             f"by each bundle's default sampler (ddpm_cmr and ldm_cmr DDIM-50, fm_cmr Euler-10) from the same "
             f"{result['masks']} mask_generator masks, tested on the 10 real test patients."]
    for name, mask_set in result.get("mask_sets", {}).items():
        drawn = [row["label"] for row in rows.values() if row.get("mask_set") == name]
        if drawn:
            parts[0] += (f" Drawn on another set of {mask_set['masks']} masks (first used {mask_set['first_used']}; a new "
                         f"mask_generator run, the first set's weights being gone): {'; '.join(drawn)}.")
    for key, row in rows.items():
        if "training" in row:
            t = row["training"]
            extra = (f", (ε, δ) = ({row['dp_training']['epsilon']:.2f}, {row['dp_training']['delta']:g}), noise multiplier "
                     f"{row['dp_training']['noise_multiplier']:.3f}" if "dp_training" in row else "")
            threads, m = t.get("threads", 1), measured[key]
            parts.append(f"- {row['label']}: {t['iteration']} steps ({t['training_wall_seconds'] / 60:.0f} min on {threads} "
                         f"thread{'s' if threads > 1 else ''}){extra}; {'audited' if 'audit' in row else 'images scored'} "
                         f"{m['date']} on {m['threads']} thread{'s' if m['threads'] > 1 else ''}.")
    parts += ["### Privacy", privacy_table(rows),
              "The strongest attack is picked after the fact among 8 uncalibrated (and 8 calibrated) attacks, so its AUC is "
              "optimistic for the attacker. Per slice, 1 % FPR of the non-member slices allows one or two false positives "
              "and 0.1 % none.", "### Utility and fidelity of the images", utility_table(rows)]
    if result.get("aims"):
        parts += ["### Aims", "\n".join(f"- {k}: {v}" for k, v in result["aims"].items())]
    for row in (r for r in rows.values() if "audit" in r):
        body = report_markdown(row["audit"]).split("\n", 1)[1].replace("\n## ", "\n#### ")
        parts.append(f"### {row['label']}\n{body}")
    return "\n\n".join(parts)


def _dice(row: dict) -> dict[str, float]:
    """Synthetic-only segmenter Dice per structure and phase of a recipe with images."""
    summary = row["images"]["segmenter"]["summary"]
    return {f"{s} {p}": summary[f"{p}/dice_{s.lower()}"]["mean"] for s in ("LV", "MYO", "RV") for p in ("ED", "ES")}


def privacy_aim_numbers(audit: dict) -> dict:
    """The privacy aim's measurements on one audit: the strongest slice-level attack AUC (all non-members, and the test
    patients alone), the highest TPR at 1 % FPR of any attack over all non-member slices, the black-box reconstruction
    AUC, whether the aim is met, the strict reading (below), and the strongest calibrated per-patient AUC.

    TPR at 1 % FPR is read where 1 % FPR is resolvable: over the 120 slices of all 20 non-members (one false positive
    allowed). The test patients alone have 60, so their "1 % FPR" is the TPR at no false positive, the maximum of 16
    noisy values; it is the strict reading, not part of the verdict (an at-chance DP generator fails it too)."""
    tables = [audit["membership_slices"], audit.get("test_non_members_only", {}).get("membership_slices", {})]
    slices = {f"{n} (test non-members)" if i else n: m for i, t in enumerate(tables) for n, m in t.items()}
    name, best = strongest(slices)
    tpr = max(m["tpr_at_1pct_fpr"]["value"] for m in tables[0].values())
    strict = max((m["tpr_at_1pct_fpr"]["value"] for m in tables[1].values()), default=tpr)
    rec_name, rec = strongest(audit["reconstruction"]["membership"])
    met = best["auc"]["value"] <= 0.60 and tpr <= 0.05 and rec["auc"]["value"] <= 0.60
    return {"strongest_slice_attack": name, "strongest_slice_auc": best["auc"]["value"], "tpr_at_1pct_fpr": tpr,
            "black_box_attack": rec_name, "black_box_auc": rec["auc"]["value"], "met": met, "strict_tpr": strict,
            "strongest_patient_cal_auc": strongest_of_kind(audit["membership"], True)[1]["auc"]["value"]}


def aim_cells(n: dict) -> str:
    """``privacy_aim_numbers`` as table cells: strongest slice-level attack, TPR at 1 % FPR, black-box AUC, calibrated
    per-patient AUC, verdict."""
    return (f"{n['strongest_slice_auc']:.2f} ({n['strongest_slice_attack']}) | {n['tpr_at_1pct_fpr']:.3f} | "
            f"{n['black_box_auc']:.2f} ({n['black_box_attack']}) | {n['strongest_patient_cal_auc']:.2f} | "
            f"{'met' if n['met'] else 'not met'}")


def privacy_aim(row: dict) -> str:
    """The privacy aim on one recipe, stated with what was measured (``privacy_aim_numbers``)."""
    n = privacy_aim_numbers(row["audit"])
    strict = "met" if n["met"] and n["strict_tpr"] <= 0.05 else "not met"
    return (f"{'met' if n['met'] else 'not met'} (strongest {n['strongest_slice_attack']} AUC {n['strongest_slice_auc']:.2f}; "
            f"highest TPR at 1 % FPR of any attack {n['tpr_at_1pct_fpr']:.3f}; black-box AUC {n['black_box_auc']:.2f} "
            f"({n['black_box_attack']}); strict reading, the test patients' TPR at no false positive: "
            f"{n['strict_tpr']:.3f}, {strict})")


#: the rows the privacy aim is stated for: each generator's default as audited, the current ddpm_cmr default first
#: (new_default: its previous one), and fm_cmr's public-start candidates
AIM_ROWS = ("public_6", "new_default", "fm_new_default", "fm_public_6", "fm_public_3", "ldm_new_default", "ldm_public_6", "ldm_public_3")


def same_masks(a: dict, b: dict) -> bool:
    """Whether two rows' images were drawn on the same mask set (rows without a record: the benchmark's first set)."""
    return a.get("mask_set") == b.get("mask_set")


def _dice_gap(reference: dict, row: dict) -> tuple[str, float, int]:
    """The largest drop of ``row``'s synthetic-only Dice below ``reference``'s: (cell, drop, cells lower)."""
    drops = {cell: v - _dice(row)[cell] for cell, v in _dice(reference).items()}
    cell, worst = max(drops.items(), key=lambda kv: kv[1])
    return cell, worst, sum(d > 0 for d in drops.values())


def aims(rows: dict) -> dict:
    """The issue's aims, each stated with what was measured (the privacy aim on every generator's default)."""
    out = {}
    for key in (k for k in AIM_ROWS if k in rows and "reconstruction" in rows[k]["audit"]):
        out[f"{rows[key]['label']}: strongest attack AUC <= 0.60 with TPR <= 5 % at 1 % FPR (slice level), "
            f"black-box AUC <= 0.60"] = privacy_aim(rows[key])
    dp = rows.get("dp_pretrained")
    olds = [rows[k] for k in ("old_default", "old_rerun") if k in rows and "images" in rows[k]]
    with_images = [k for k in ("public_6", "new_default") if k in rows and "images" in rows[k]]
    for key in with_images:
        # the old recipe's images on this row's mask set where there are some (the retrained reference), else the first
        old = next((o for o in olds if same_masks(o, rows[key])), olds[0] if olds else None)
        if old:
            cell, worst, lower = _dice_gap(old, rows[key])
            caveat = "" if same_masks(old, rows[key]) else "; images drawn on a different mask set than the old default's"
            out[f"{rows[key]['label']}: synthetic-only Dice no lower than the old default's"] = (
                ("met (no cell lower)" if worst <= 0 else f"not met ({lower} of 6 cells lower; largest drop {worst:.3f} Dice, {cell})")
                + caveat)
    if dp and "images" in dp and with_images:
        # a non-DP default drawn on the DP row's own masks where there is one (the mask set moves Dice too)
        default = next((rows[k] for k in with_images if same_masks(rows[k], dp)), rows[with_images[0]])
        cell, worst, _ = _dice_gap(default, dp)
        caveat = "" if same_masks(default, dp) else "; images drawn on a different mask set"
        out[f"DP after pre-training within 0.03 Dice of the non-DP default ({default['label']})"] = (
            f"{'met' if worst <= 0.03 else 'not met'} (largest gap {worst:.3f} Dice, {cell}{caveat})")
    return out


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.set_defaults(threads=2)
    p.add_argument("--seg-work", default=str(REPO / "runs" / "bench_seg13"), help="the seg_utility benchmark's work folder "
                   "(its mask set, the old default's segmenter and the real-only scorer)")
    p.add_argument("--slices-per-patient", type=int, default=6)
    p.add_argument("--recipes", default=",".join(RECIPES), help="which rows to (re)run")
    args = p.parse_args()
    path = BUNDLE / "docs" / "benchmark.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    if args.stage == "render":  # labels and aims are derived from the recipes and rows: restated with the current wording
        for key, row in result["recipes"].items():
            row["label"] = RECIPES[key].label
        result["aims"] = aims(result["recipes"])
        write_benchmark(path, result)
        replace_marked(BUNDLE / "docs" / "README.md", "results", results_markdown(result))
        return
    work, seg_work = Path(args.work), Path(args.seg_work)
    data = prepared_acdc(work / "acdc64", 64)
    real = data / "datalist.json"
    masks = seg_work / "synthetic" / "masks" / "datalist.json"
    mask_set = sha256(masks)[:12]
    few_patient_datalist(data, 5)
    untrained_generator(work / RECIPES["untrained"].root, args.seed)
    if result.get("benchmark") != "privacy by default":
        result = {}  # the earlier benchmark's rows were measured without calibration: start a new table
    result.update({"bundle": "privacy_audit", "benchmark": "privacy by default", "machine": machine(), "threads": args.threads,
                   "slices_per_patient": args.slices_per_patient,
                   "data": "ACDC (../shared/data/acdc), 64x64, seed-0 split: members = the generator's training patients, "
                           "non-members = the 20 val + test patients"})
    rows = result.setdefault("recipes", {})
    # the first mask set's rows carry no record (its weights are gone); a later set is named in each row drawn on it
    count = len(json.loads(masks.read_text())["synthetic"])
    result.setdefault("masks", count)
    result.setdefault("mask_sets", {}).setdefault(mask_set, {"masks": count, "first_used": time.strftime("%Y-%m-%d")})
    for key in args.recipes.split(","):
        recipe = RECIPES[key]
        root = work / recipe.root
        if not (root / "models" / "checkpoint_final.pt").is_file():  # written when training ends
            print(f"{key}: {root} not trained yet (scripts/train_privacy_benchmark_generators.sh); skipped")
            continue
        fresh = not (work / "privacy_audit" / key / "audit.json").is_file()  # else the audit is reused, and its date
        row = {"label": recipe.label, "root": recipe.root, "checkpoint": recipe.checkpoint,
               "measured": ({"date": time.strftime("%Y-%m-%d"), "threads": args.threads} if fresh
                            else rows.get(key, {}).get("measured"))}
        if recipe.pipeline_stages:
            row["training"] = pipeline_training_facts(root, recipe.pipeline_stages)
        elif adopt_queue_log(work, recipe.root):
            row["training"] = training_facts(root)
        if recipe.dp:
            row["dp_training"] = dp_training_facts(root, 1e-5)
        if recipe.utility:
            row["images"] = evaluate_images(work, seg_work, key, recipe, masks, real, args.seed, args.threads)
            row["mask_set"] = mask_set
        synthetic = (Path(row["images"]["images"]) if recipe.utility
                     else masks if key == "mask_generator"  # the benchmark's masks (its final weights)
                     else work / recipe.synthetic if recipe.synthetic else None)
        if recipe.audited:
            row["audit"] = audit(work, recipe, key, data, synthetic, seg_work / "seg_utility" / "real", args.threads,
                                 args.slices_per_patient)
        rows[key] = row
        result["aims"] = aims(rows)
        result["finished"] = time.strftime("%Y-%m-%d %H:%M")
        write_benchmark(path, result)
        print(f"{key}: done {time.strftime('%H:%M')}", flush=True)
    replace_marked(BUNDLE / "docs" / "README.md", "results", results_markdown(result))


if __name__ == "__main__":
    main()

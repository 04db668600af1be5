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
"""The main job: the end-to-end pipeline on the embedded phantom cohort (no real data needed).

Stages: draw a phantom cohort in the ACDC layout; prepare it into 2D slices with a patient-level split; train
the mask_generator and ddpm_cmr bundles (through \`\`python -m monai.bundle run\`\`, a short wall-time budget each);
sample masks per (group, phase), then images on them; train seg_utility on real and on real + synthetic slices and
score both on the real test patients; score ddpm_cmr's fidelity; audit its privacy. Every step is tracked in one MLflow store under the run
folder. The demo budgets are minutes, so its images show the chain works, not what the models can do: the
benchmarks (scripts/benchmark_*.py) train on real data.

Example: python scripts/run_pipeline.py --out runs/demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from cmrsynth.bundle_run import run_bundle
from cmrsynth.data.checks import EXIT_BAD_INPUT, error_line
from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.phantom import write_phantom_cohort
from cmrsynth.data.prepare import PrepareConfig, duplicate_lines, prepare_cohort, skipped_lines
from cmrsynth.errors import CMRDataError
from cmrsynth.report import datalist_preview
from cmrsynth.tracking import tracked_run, tracking_uri

REPO = Path(__file__).resolve().parents[1]


def train_and_sample(out: Path, prepared: Path, size: int, minutes: float, steps: int, per_class: int) -> dict:
    """Train both generator bundles for ``minutes`` each, then sample masks and images on them."""
    tracking = ["--tracking", "mlflow", "--tracking_uri", tracking_uri(out)]
    masks, images = REPO / "bundles" / "mask_generator", REPO / "bundles" / "ddpm_cmr"
    train = {"dataset_dir": str(prepared), "image_size": size, "max_minutes": minutes, "max_epochs": 100000, "epoch_length": 10,
             "val_interval": 1}
    run_bundle(masks, ["common.yaml", "train.yaml"], out / "mask_generator", train, extra_args=tracking)
    run_bundle(masks, ["common.yaml", "inference.yaml"], out / "mask_generator",
               {"image_size": size, "per_class": per_class, "num_inference_steps": steps, "keep_implausible": True})
    run_bundle(images, ["common.yaml", "train.yaml"], out / "ddpm_cmr", train, extra_args=tracking)
    mask_list = out / "mask_generator" / "eval" / "masks" / "datalist.json"
    run_bundle(images, ["common.yaml", "inference.yaml"], out / "ddpm_cmr",
               {"image_size": size, "mask_datalist": str(mask_list), "num_inference_steps": steps})
    return {
        "masks": json.loads(mask_list.read_text())["summary"],
        "images": json.loads((out / "ddpm_cmr" / "eval" / "images" / "datalist.json").read_text())["summary"],
    }


def score_and_audit(out: Path, prepared: Path, size: int, minutes: float, steps: int) -> dict:
    """seg_utility (real only and real + synthetic, scored on the real test patients), the fidelity of ddpm_cmr's
    images of the real test masks, and a privacy audit of ddpm_cmr."""
    tracking = ["--tracking", "mlflow", "--tracking_uri", tracking_uri(out)]
    seg, images, audit = REPO / "bundles" / "seg_utility", REPO / "bundles" / "ddpm_cmr", REPO / "bundles" / "privacy_audit"
    real = str(prepared / "datalist.json")
    synthetic = str(out / "ddpm_cmr" / "eval" / "images" / "datalist.json")
    modes = {"real": [{"datalist": real, "key": "training"}],
             "real_synthetic": [{"datalist": real, "key": "training"}, {"datalist": synthetic, "key": "training", "ratio": 1.0}]}
    result: dict = {"utility": {}}
    for mode, sources in modes.items():
        root = out / "seg_utility" / mode
        run_bundle(seg, ["common.yaml", "train.yaml"], root, {"real_datalist": real, "sources": sources, "image_size": size,
                   "max_minutes": minutes, "max_epochs": 100000, "epoch_length": 10, "progress_bar": False}, extra_args=tracking)
        run_bundle(seg, ["common.yaml", "evaluate.yaml"], root, {"real_datalist": real, "eval_key": "test"})
        summary = json.loads((root / "eval" / "evaluation" / "metrics.json").read_text())["summary"]
        result["utility"][mode] = {k: v["mean"] for k, v in summary.items() if "/dice_" in k}
    paired = out / "ddpm_cmr" / "eval" / "test_masks"
    run_bundle(images, ["common.yaml", "inference.yaml"], out / "ddpm_cmr",
               {"image_size": size, "mask_datalist": real, "mask_key": "test", "output_dir": str(paired), "num_inference_steps": steps})
    run_bundle(seg, ["common.yaml", "fidelity.yaml"], out / "seg_utility" / "real",
               {"real_datalist": real, "synthetic_datalist": str(paired / "datalist.json")})
    result["fidelity"] = json.loads((out / "seg_utility" / "real" / "eval" / "fidelity" / "fidelity.json").read_text())
    run_bundle(audit, ["audit.yaml"], out / "privacy_audit",
               {"generator_bundle": str(images), "generator_root": str(out / "ddpm_cmr"), "real_datalist": real,
                "synthetic_datalist": synthetic, "generator_overrides": {"image_size": size}, "tracking_uri": tracking_uri(out),
                "feature_encoder_root": str(out / "seg_utility" / "real"), "feature_encoder_bundle": str(seg)})
    result["privacy"] = json.loads((out / "privacy_audit" / "eval" / "audit" / "audit.json").read_text())
    return result


def run(out: Path, n_per_group: int, size: int, seed: int, overwrite: bool, minutes: float, steps: int) -> dict:
    """Phantom cohort -> prepared slices -> generators trained and sampled, tracked in MLflow."""
    cfg = PrepareConfig(size=size, seed=seed)
    params = {"n_per_group": n_per_group, "prepare": vars(cfg), "train_minutes": minutes, "ddim_steps": steps}
    with tracked_run(out, "cmr-synth-pipeline", "phantom-demo", params) as t:
        cohort = out / "phantom_cohort"
        write_phantom_cohort(cohort, n_per_group=n_per_group, seed=seed, overwrite=overwrite)
        summary = prepare_cohort(read_acdc(cohort), out / "prepared", cfg, overwrite=overwrite)
        png = datalist_preview(out / "prepared", out / "prepared_slices.png")
        t.log_metrics({"patients": summary["patients"], "slices": summary["slices"],
                       "duplicate_groups": len(summary["duplicate_groups"])})
        t.log_artifact(png)
        t.log_artifact(out / "prepared" / "summary.json")
        if minutes > 0:
            summary["generated"] = train_and_sample(out, out / "prepared", size, minutes, steps, per_class=1)
            t.log_metrics({"mask_plausibility_rate": summary["generated"]["masks"]["plausibility_rate"],
                           "synthetic_images": summary["generated"]["images"]["generated"]})
            t.log_artifact(out / "mask_generator" / "eval" / "masks" / "masks.png")
            t.log_artifact(out / "ddpm_cmr" / "eval" / "images" / "samples.png")
            scores = score_and_audit(out, out / "prepared", size, minutes, steps)
            summary["scores"] = scores
            t.log_metrics({f"dice_lv_ed_{mode}": d.get("ED/dice_lv", float("nan")) for mode, d in scores["utility"].items()})
            t.log_metrics({"fd_seg": scores["fidelity"]["fd_seg"], "ssim": scores["fidelity"]["paired"]["ssim"],
                           "membership_auc_loss_t100": scores["privacy"]["membership"]["loss_t100"]["auc"]["value"]})
            t.log_artifact(out / "privacy_audit" / "eval" / "audit" / "audit.md")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of the main job."""
    p = argparse.ArgumentParser(description="cmr-synth end-to-end pipeline on the embedded phantom cohort")
    p.add_argument("--out", default="runs/demo", help="run folder (data, MLflow store, figures)")
    p.add_argument("--n-per-group", type=int, default=4, help="phantom patients per pathology group")
    p.add_argument("--size", type=int, default=64, help="slice size (64 CPU preset, 128 reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier run")
    p.add_argument("--train-minutes", type=float, default=2.0, help="training budget per generator (0: prepare only)")
    p.add_argument("--ddim-steps", type=int, default=20, help="DDIM steps when sampling")
    args = p.parse_args(argv)
    out = Path(args.out).absolute()
    try:
        summary = run(out, args.n_per_group, args.size, args.seed, args.overwrite, args.train_minutes, args.ddim_steps)
    except (CMRDataError, FileExistsError, ValueError, RuntimeError, OSError) as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"phantom cohort: {summary['patients']} patients, split {summary['patients_per_split']}")
    print(f"prepared slices: {summary['slices']} at {summary['size']}x{summary['size']} ({summary['spacing_mm']} mm), {summary['slices_per_split']}")
    print("\n".join(duplicate_lines(summary) + skipped_lines(summary)))
    if "generated" in summary:
        m, i = summary["generated"]["masks"], summary["generated"]["images"]
        print(f"synthetic masks: {m['generated']} ({m['plausibility_rate']:.0%} plausible) -> {out / 'mask_generator/eval/masks'}")
        print(f"synthetic images: {i['generated']} ({i['seconds_per_image']:.2f} s each) -> {out / 'ddpm_cmr/eval/images'}")
        sc = summary["scores"]
        for mode, d in sc["utility"].items():
            print(f"segmenter trained on {mode}: test Dice LV ED {d.get('ED/dice_lv', float('nan')):.3f} -> {out / 'seg_utility' / mode}")
        f = sc["fidelity"]
        print(f"fidelity of ddpm_cmr on the test masks: FD (segmenter features, not Inception) {f['fd_seg']:.3f}, "
              f"SSIM {f['paired']['ssim']:.3f}, mask faithfulness LV Dice {f['mask_faithfulness']['lv']:.3f}")
        print(f"privacy audit: loss-attack AUC {sc['privacy']['membership']['loss_t100']['auc']['value']:.2f} "
              f"-> {out / 'privacy_audit/eval/audit/audit.md'}")
    print(f"picture: {out / 'prepared_slices.png'}\nMLflow store: {out / 'mlflow.db'}  (mlflow ui --backend-store-uri sqlite:///{out / 'mlflow.db'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

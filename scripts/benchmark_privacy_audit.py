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
"""Benchmark of the privacy_audit bundle on real ACDC (CPU preset, 64x64): audits the ddpm_cmr trained by
scripts/benchmark_ddpm_cmr.py (members: the 50 train patients; non-members: the 20 val + test patients), with
sanity rows: an untrained ddpm_cmr (must not be caught) and a ddpm_cmr overfit on 5 patients (must be caught);
the same recipe stopped at its validation minimum (does early stopping reduce the leak?); and its DP-SGD twin (same config and data plus configs/dp_train.yaml, same wall-time budget), whose images on the
mask_generator masks go to scripts/benchmark_seg_utility.py --modes synthetic-dp for utility.

    python scripts/benchmark_privacy_audit.py --work runs/bench3 --overfit-minutes 12 --dp-minutes 30
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from cmrsynth.benchmark import (REPO, draw_images, machine, parser, prepared_acdc, replace_marked, train_bundle, training_facts,
                                untrained_generator, write_benchmark)
from cmrsynth.bundle_run import run_bundle

BUNDLE = REPO / "bundles" / "privacy_audit"
DDPM = REPO / "bundles" / "ddpm_cmr"


def audit(work: Path, generator_root: Path, datalist: Path, synthetic: Path | None, name: str, threads: int,
          slices_per_patient: int, bundle: Path = DDPM) -> dict:
    """Run audit.yaml on one trained generator bundle; return its audit.json."""
    out = work / "privacy_audit" / name
    overrides = {"generator_bundle": str(bundle), "generator_root": str(generator_root), "real_datalist": str(datalist),
                 "output_dir": str(out), "slices_per_patient": slices_per_patient}
    if synthetic is not None and synthetic.is_file():
        overrides["synthetic_datalist"] = str(synthetic)
        encoder = work / "seg_utility" / "real"  # the real-only segmenter of scripts/benchmark_seg_utility.py
        if (encoder / "models" / "model.pt").is_file():
            overrides.update(feature_encoder_root=str(encoder), feature_encoder_bundle=str(REPO / "bundles" / "seg_utility"))
    seconds = run_bundle(BUNDLE, ["audit.yaml"], work / "privacy_audit", overrides, log=work / "privacy_audit" / f"{name}.log",
                         env={"OMP_NUM_THREADS": str(threads)})
    result = json.loads((out / "audit.json").read_text())
    result["audit_wall_seconds"] = round(seconds, 1)
    if "leakage" in result:  # the per-sample list stays in the run folder
        result["leakage"].pop("synthetic_to_train", None)
    return result


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


def dp_training_facts(root: Path) -> dict:
    """How the DP-SGD twin trained (train.log) and what it spent (the accountant history in its final checkpoint,
    at dp_train.yaml's delta)."""
    import torch
    from monai.bundle import ConfigParser

    from cmrsynth.dp import budget_spent

    dp = ConfigParser.load_config_file(str(DDPM / "configs" / "dp_train.yaml"))
    state = torch.load(root / "models" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    if "dp" not in state:
        raise SystemExit(f"{root}: the checkpoint holds no DP-SGD accountant (did training run with dp_train.yaml?)")
    return {"max_grad_norm": dp["dp_max_grad_norm"], **training_facts(root), **budget_spent(state["dp"], dp["dp_delta"])}


def copy_figures(work: Path) -> None:
    """The closest-to-training figures of the audits with a synthetic set, and the DP twin's samples, into docs/."""
    import shutil

    figures = {work / "privacy_audit" / "ddpm_cmr" / "closest_synthetic_vs_train.png": "closest_ddpm_cmr.png",
               work / "privacy_audit" / "DP-SGD_ddpm_cmr" / "closest_synthetic_vs_train.png": "closest_dp_ddpm_cmr.png",
               work / "synthetic" / "dp" / "samples.png": "dp_ddpm_cmr_samples.png"}
    for source, name in figures.items():
        if source.is_file():
            shutil.copy(source, BUNDLE / "docs" / name)


def summary_table(audits: dict) -> str:
    """One row per audited generator: its strongest attack and its synthetic set's near copies."""
    rows = ["| generator | strongest white-box attack: ROC AUC [95 % CI] | its balanced accuracy (cross-fitted) | "
            "reconstruction attack (black-box, RMS): ROC AUC [95 % CI] | near copies, pixel / feature space |",
            "|---|---|---|---|---|"]
    for name, a in audits.items():
        attack, m = max(a["membership"].items(), key=lambda kv: kv[1]["auc"]["value"])
        auc = m["auc"]
        leak = a.get("leakage", {})
        copies = " / ".join(f"{leak[k]['near_copies']} of {leak[k]['synthetic']}" for k in ("pixel", "feature") if k in leak) or "-"
        rec = a.get("reconstruction", {}).get("membership", {}).get("neg_rms", {}).get("auc")
        rec = f"{rec['value']:.2f} [{rec['ci95'][0]:.2f}, {rec['ci95'][1]:.2f}]" if rec else "-"
        rows.append(f"| {name} | {attack}: {auc['value']:.2f} [{auc['ci95'][0]:.2f}, {auc['ci95'][1]:.2f}] | "
                    f"{m['balanced_accuracy']['value']:.2f} | {rec} | {copies} |")
    return "\n".join(rows + ["", "The strongest of 8 white-box attacks is picked after the fact, so its AUC is optimistic "
                              "for the attacker; the cross-fitted balanced accuracy never sees the scores it calls (values "
                              "below 0.5 mean the rule learned on one half of the patients does not carry over: no signal)."])


def results_markdown(result: dict) -> str:
    """Per generator: the attack table (best timestep per attack family shown first) and the leakage summary."""
    from cmrsynth.audit import report_markdown

    parts = [f"Measured on {result['machine']['date']}, {result['data']}; {result['threads']} torch threads."]
    if "overfit_training" in result:
        o = result["overfit_training"]
        parts.append(f"The overfit sanity generator trained {o['iteration']} steps ({o['training_wall_seconds'] / 60:.0f} min) on {o['patients']} patients.")
    if "early_training" in result:
        e = result["early_training"]
        parts.append(f"The early-stopped generator is the benchmark recipe stopped after {e['iteration']} steps "
                     f"({e['training_wall_seconds'] / 60:.0f} min), where ddpm_cmr's validation loss was lowest.")
    if "dp_training" in result:
        d = result["dp_training"]
        parts.append(f"The DP-SGD twin trained {d['iteration']} steps ({d['training_wall_seconds'] / 60:.0f} min, budget {d['budget_minutes']:.0f} min) "
                     f"on the same 50 members and config plus `dp_train.yaml`: (ε, δ) = ({d['epsilon']:.2f}, {d['delta']:g}) spent, "
                     f"noise multiplier {d['noise_multiplier']:.3f}, clipping norm {d['max_grad_norm']}.")
    parts.append(summary_table(result["audits"]))
    for name, a in result["audits"].items():
        body = report_markdown(a).split("\n", 1)[1].replace("\n## ", "\n#### ")  # drop the title, nest the sections
        parts.append(f"### {name}\n{body}")
    return "\n\n".join(parts)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.set_defaults(threads=2)
    p.add_argument("--slices-per-patient", type=int, default=6)
    p.add_argument("--overfit-minutes", type=float, default=12.0, help="training budget of the 5-patient generator (0: skip)")
    p.add_argument("--dp-minutes", type=float, default=0.0, help="training budget of the DP-SGD twin (0: skip)")
    p.add_argument("--dp-epochs", type=int, default=50, help="planned passes of the DP twin (sets its noise for epsilon 10)")
    p.add_argument("--audits", default="benchmark,untrained,overfit,dp,early", help="which audits to (re)run")
    args = p.parse_args()
    path = BUNDLE / "docs" / "benchmark.json"
    if args.stage == "render":
        replace_marked(BUNDLE / "docs" / "README.md", "results", results_markdown(json.loads(path.read_text())))
        return
    work = Path(args.work)
    data = prepared_acdc(work / "acdc64", 64)
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update({"bundle": "privacy_audit", "machine": machine(), "threads": args.threads,
                   "data": "ACDC (../shared/data/acdc), 64x64, seed-0 split: members = the generator's training patients, "
                           "non-members = the 20 val + test patients"})
    audits = result.setdefault("audits", {})
    wanted = args.audits.split(",")
    runs = {}
    if "benchmark" in wanted:
        runs["ddpm_cmr (benchmark generator, 50 members)"] = (work / "ddpm_cmr", data / "datalist.json",
                                                             work / "synthetic" / "images" / "datalist.json")
    if "untrained" in wanted:
        runs["untrained ddpm_cmr (sanity: must not be caught)"] = (untrained_generator(work / "ddpm_cmr_untrained", args.seed),
                                                                   data / "datalist.json", None)
    if "dp" in wanted and args.dp_minutes > 0:
        root = work / "ddpm_cmr_dp"
        if not (root / "models" / "checkpoint_final.pt").is_file():  # a rerun audits the trained twin, no more training
            train_bundle(DDPM, data, root, args.dp_minutes, args.seed, args.threads, {"dp_epochs": args.dp_epochs},
                         overlays=("dp_train.yaml",))
        result["dp_training"] = {"budget_minutes": args.dp_minutes, "planned_epochs": args.dp_epochs, **dp_training_facts(root)}
        write_benchmark(path, result)
        masks = work / "synthetic" / "masks" / "datalist.json"
        synthetic = draw_images(root, masks, "synthetic", work / "synthetic" / "dp", args.seed + 1, args.threads)
        runs["DP-SGD ddpm_cmr (twin of the benchmark generator, 50 members)"] = (root, data / "datalist.json", synthetic)
    if "early" in wanted:  # the benchmark generator's recipe stopped at its validation minimum (epoch 15, 3,000 steps)
        root = work / "ddpm_cmr_epoch15"
        if not (root / "models" / "checkpoint_final.pt").is_file():
            train_bundle(DDPM, data, root, 30.0, args.seed, args.threads, {"max_epochs": 15})
        result["early_training"] = {"max_epochs": 15, **training_facts(root)}
        runs["ddpm_cmr stopped at epoch 15 (its validation minimum), 50 members"] = (root, data / "datalist.json", None)
    if "overfit" in wanted and args.overfit_minutes > 0:
        few = few_patient_datalist(data, 5)
        root = work / "ddpm_cmr_overfit5"
        if not (root / "models" / "checkpoint_final.pt").is_file():  # a rerun audits the trained generator, no more training
            train_bundle(DDPM, data, root, args.overfit_minutes, args.seed, args.threads, {"datalist": str(few)})
        result["overfit_training"] = {"patients": 5, "budget_minutes": args.overfit_minutes, **training_facts(root)}
        runs["ddpm_cmr overfit on 5 patients (sanity: must be caught)"] = (root, few, None)
    for name, (root, datalist, synthetic) in runs.items():
        audits[name] = audit(work, root, datalist, synthetic, name.split(" (")[0].replace(" ", "_"), args.threads,
                              args.slices_per_patient)
        result["finished"] = time.strftime("%Y-%m-%d %H:%M")
        write_benchmark(path, result)
    copy_figures(work)
    replace_marked(BUNDLE / "docs" / "README.md", "results", results_markdown(result))
    print(json.dumps({n: {k: round(v["auc"]["value"], 3) for k, v in a["membership"].items()} for n, a in audits.items()}, indent=1))


if __name__ == "__main__":
    main()

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
"""Shared pieces of the benchmark scripts: the benchmark split of real ACDC, machine facts, JSON output."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.atomic import write_json_atomic
from cmrsynth.data.datalist import load_section  # noqa: F401 (re-exported for the benchmark scripts)
from cmrsynth.data.prepare import PrepareConfig, prepare_cohort

REPO = Path(__file__).resolve().parents[2]
ACDC = REPO.parent / "shared" / "data" / "acdc"


def prepared_acdc(out: str | Path, size: int = 64, acdc_root: str | Path = ACDC) -> Path:
    """The benchmark protocol's prepared ACDC (seed 0, 50/10/10 patients stratified by group); prepared if missing."""
    out = Path(out)
    if not (out / "datalist.json").is_file():
        if not Path(acdc_root).is_dir():
            raise SystemExit(f"real ACDC data not found at {acdc_root}: the benchmark needs it")
        prepare_cohort(read_acdc(acdc_root), out, PrepareConfig(size=size, seed=0))
    return out


def machine() -> dict:
    """Facts about where a benchmark ran."""
    return {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }


def write_benchmark(path: str | Path, result: dict) -> None:
    """Write a benchmark JSON (atomically) with NaN turned into null."""
    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, float) and not np.isfinite(x):
            return None
        return x

    write_json_atomic(path, clean(result))


def training_rows(r: dict, conditioning: str | None = None) -> list[str]:
    """The first rows of a generator's docs table, from its benchmark.json: where it ran and how it trained."""
    t, v = r["training"], r["evaluation"]["validation_mse_raw_vs_ema"]
    curve = ", ".join(f"{c['epoch']}: {c['val_mse_ema']:.4f}" for c in t.get("validation_curve", []))
    how = f", {conditioning} conditioning" if conditioning else ""
    return [f"Measured on {r['machine']['date']}, {r['data']}; {r['machine']['cores']}-core CPU, {r['threads']} torch threads.", "",
            "| | value |", "|---|---|",
            f"| training | {t['iteration']} steps ({t['epoch']} epochs), batch {t['batch_size']}{how}, "
            f"{t['training_wall_seconds'] / 60:.0f} min (budget {t['budget_minutes']:.0f} min), {t['seconds_per_step']:.2f} s/step |",
            f"| validation MSE (EMA) by epoch | {curve} |",
            f"| final validation MSE, raw vs EMA weights | {v['raw']:.4f} vs {v['ema']:.4f} |"]


def replace_marked(path: str | Path, name: str, text: str, inline: bool = False) -> None:
    """Replace the text between ``<!-- name -->`` and ``<!-- /name -->`` in a docs file (rendered results);
    ``inline`` keeps it on the markers' line (a table cell)."""
    path = Path(path)
    doc = path.read_text()
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start not in doc or end not in doc:
        raise ValueError(f"{path}: markers {start} ... {end} not found")
    head, rest = doc.split(start, 1)
    gap = "" if inline else "\n"
    path.write_text(head + start + gap + text.strip() + gap + end + rest.split(end, 1)[1])


def untrained_generator(root: Path, seed: int, bundle: str = "ddpm_cmr") -> Path:
    """A generator bundle root whose checkpoints (final and best) hold freshly initialised weights (the sanity
    generator)."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    set_determinism(seed)
    cfg = ConfigParser()
    cfg.read_config(str(REPO / "bundles" / bundle / "configs" / "common.yaml"))
    cfg.update({"device": "$torch.device('cpu')"})
    (root / "models").mkdir(parents=True, exist_ok=True)
    state = {"ema": cfg.get_parsed_content("ema").state_dict(), "card": cfg.get_parsed_content("generator").card.state_dict()}
    for name in ("checkpoint_final.pt", "best_ema.pt"):  # inference loads best_ema.pt by default
        torch.save(state, root / "models" / name)
    return root


def draw_images(generator_root: Path, masks: Path, key: str, out: Path, seed: int, threads: int, bundle: str = "ddpm_cmr",
                overrides: dict | None = None) -> Path:
    """A generator bundle's images (its inference.yaml and default sampler unless ``overrides`` say otherwise) for
    the masks of a datalist section; returns the synthetic datalist. Skipped when ``out`` already holds one."""
    from cmrsynth.bundle_run import run_bundle

    if not (out / "datalist.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        run_bundle(REPO / "bundles" / bundle, ["common.yaml", "inference.yaml"], generator_root,
                   {"mask_datalist": str(masks), "mask_key": key, "output_dir": str(out), "seed": seed, **(overrides or {})},
                   log=out.parent / f"{out.name}.log", env={"OMP_NUM_THREADS": str(threads)})
    return out / "datalist.json"


def parser(description: str):
    """Command-line options shared by the generator benchmarks."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--minutes", type=float, default=50.0, help="training wall-time budget")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (two benchmarks can share the 2 cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage", choices=["all", "train", "evaluate", "render"], default="all",
                   help="render: only rewrite the docs from the committed benchmark.json (nothing is measured)")
    p.add_argument("--work", default=str(REPO / "runs" / "bench"), help="working folder (data, checkpoints)")
    return p


def train_bundle(bundle: Path, data: Path, root: Path, minutes: float, seed: int, threads: int,
                 extra: dict | None = None, overlays: tuple[str, ...] = ()) -> dict:
    """Train a generator bundle on prepared data within a wall-time budget (resuming if a checkpoint exists).

    ``overlays`` are config files applied after train.yaml (e.g. ``("dp_train.yaml",)``).
    """
    from cmrsynth.bundle_run import run_bundle, trainer_progress

    overrides = {"dataset_dir": str(data), "max_epochs": 100000, "max_minutes": minutes, "seed": seed,
                 "progress_bar": False, **(extra or {})}
    seconds = run_bundle(bundle, ["common.yaml", "train.yaml", *overlays], root, overrides, log=root / "train.log",
                         env={"OMP_NUM_THREADS": str(threads)})
    return {"wall_seconds": round(seconds, 1), **trainer_progress(root / "models" / "checkpoint_final.pt")}


def log_lines(log: Path, pattern: str) -> list[tuple[datetime, re.Match]]:
    """(time, match) of every INFO line of a bundle log whose message matches ``pattern`` at its start."""
    found = []
    for line in Path(log).read_text().splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ - INFO - " + pattern, line)
        if m:
            found.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"), m))
    return found


def training_facts(root: Path) -> dict:
    """Steps from the final checkpoint; wall time and validation curve from the bundle's own ``train.log``."""
    from cmrsynth.bundle_run import trainer_progress

    lines = log_lines(root / "train.log", r"(Epoch: |Epoch\[(\d+)\] Metrics -- val_mse: ([\d.]+))")
    curve = [{"epoch": int(m.group(3)), "val_mse_ema": float(m.group(4))} for _, m in lines if m.group(3)]
    progress = trainer_progress(root / "models" / "checkpoint_final.pt")
    wall = (lines[-1][0] - lines[0][0]).total_seconds() if lines else float("nan")
    return {**progress, "training_wall_seconds": wall, "seconds_per_step": wall / max(progress["iteration"], 1),
            "validation_curve": curve}


def segmenter_utility(folder: Path, real: Path, synthetic: dict[str, Path], steps: int, seed: int, threads: int) -> dict:
    """Segmenters trained in ``folder`` on real, few10 (10 real patients), and each generator's synthetic set alone
    and added to few10, scored on the real test patients (segmenters already trained are read back)."""
    real_src = {"datalist": str(real), "key": "training"}
    modes = {"real": [real_src], "few10": [{**real_src, "patients": 10}]}
    for b, datalist in synthetic.items():
        syn = {"datalist": str(datalist), "key": "training"}
        modes[f"synthetic ({b})"] = [syn]
        modes[f"few10+syn ({b})"] = [{**real_src, "patients": 10}, syn]
    return {name: train_segmenter(folder / name.replace(" ", "_").replace("(", "").replace(")", ""), sources, real, steps, seed, threads)
            for name, sources in modes.items()}


def run_benchmark(args, bundle: Path, training: dict, evaluate) -> dict:
    """Train and/or evaluate one generator bundle on the benchmark split; write ``docs/benchmark.json``.

    Args:
        args: parsed ``parser()`` options.
        bundle: the bundle folder.
        training: facts about the training setup to record (network, batch size, ...).
        evaluate: ``evaluate(args, data, root) -> dict`` of measured results.
    """
    work = Path(args.work)
    data = prepared_acdc(work / "acdc64", 64)
    root = work / bundle.name
    root.mkdir(parents=True, exist_ok=True)
    path = bundle / "docs" / "benchmark.json"
    result = json.loads(path.read_text()) if path.is_file() and args.stage == "evaluate" else {}
    result.update({"bundle": bundle.name, "data": "ACDC (../shared/data/acdc), 64x64 CPU preset, seed-0 split: "
                   "train 50 / val 10 / test 10 patients", "machine": machine(), "threads": args.threads, "seed": args.seed})
    if args.stage in ("all", "train"):
        result["training"] = {"budget_minutes": args.minutes, **training,
                              **train_bundle(bundle, data, root, args.minutes, args.seed, args.threads)}
    if "training" in result or args.stage in ("all", "train"):
        result["training"].update(training_facts(root))
    elif (root / "train.log").is_file():
        result["training"] = {"budget_minutes": args.minutes, **training, **training_facts(root)}
    if args.stage in ("all", "evaluate"):
        result["evaluation"] = evaluate(args, data, root)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M")
    write_benchmark(path, result)
    return result


@torch.no_grad()
def validation_losses(bundle: Path, data: Path, root: Path, overrides: dict | None = None) -> dict:
    """Seeded validation MSE of the final raw weights and of their EMA, built from the bundle's own configs.

    Both are scored on the same noise and timesteps (the validation prepare-batch restarts its seed), so the
    difference says whether the EMA helps.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / c) for c in ("common.yaml", "train.yaml")])
    parser.update({"bundle_root": str(root), "dataset_dir": str(data), "device": "$torch.device('cpu')", **(overrides or {})})
    state = torch.load(root / "models" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    network, ema = parser.get_parsed_content("network"), parser.get_parsed_content("ema")
    network.load_state_dict(state["network"])
    ema.load_state_dict(state["ema"])
    loader = parser.get_parsed_content("validate#dataloader")
    prepare = parser.get_parsed_content("validate#prepare_batch")
    result = {}
    for name, model in (("raw", network), ("ema", ema.module)):
        model.eval()
        prepare.reset()
        errors = [((model(x_t, **kw) - target) ** 2).mean().item() for x_t, target, _, kw in map(prepare, loader)]
        result[name] = float(np.mean(errors))
    return result


SEG_UTILITY = REPO / "bundles" / "seg_utility"


def train_segmenter(root: Path, sources: list[dict], real: Path, steps: int, seed: int, threads: int) -> dict:
    """seg_utility trained for a fixed number of steps on ``sources`` into ``root`` (skipped when its final checkpoint
    exists), scored per patient volume on the real test patients."""
    from cmrsynth.bundle_run import run_bundle, trainer_progress

    env = {"OMP_NUM_THREADS": str(threads)}
    if not (root / "models" / "checkpoint_final.pt").is_file():
        run_bundle(SEG_UTILITY, ["common.yaml", "train.yaml"], root, {"real_datalist": str(real), "sources": sources,
                   "max_epochs": steps // 50, "epoch_length": 50, "seed": seed, "progress_bar": False}, log=root / "train.log", env=env)
    out = root / "eval" / "acdc_test"
    if not (out / "metrics.json").is_file():
        run_bundle(SEG_UTILITY, ["common.yaml", "evaluate.yaml"], root, {"real_datalist": str(real), "eval_key": "test",
                   "eval_dir": str(out)}, log=root / "evaluate.log", env=env)
    metrics = json.loads((out / "metrics.json").read_text())
    composed = json.loads((root / "models" / "training_set.json").read_text())["training"]
    return {"training_slices": len(composed), **trainer_progress(root / "models" / "checkpoint_final.pt"),
            "patients": metrics["patients"], "summary": metrics["summary"]}


def score_fidelity(datalist: Path, real: Path, scorer: Path, out: Path, seed: int, threads: int) -> dict:
    """fidelity.yaml of seg_utility: the real-only segmenter at ``scorer`` scores an image set against the real test
    slices (skipped when ``out`` holds a result)."""
    from cmrsynth.bundle_run import run_bundle

    if not (out / "fidelity.json").is_file():
        run_bundle(SEG_UTILITY, ["common.yaml", "fidelity.yaml"], scorer, {"real_datalist": str(real), "synthetic_datalist": str(datalist),
                   "fidelity_dir": str(out), "seed": seed}, log=out.parent / f"{out.name}.log", env={"OMP_NUM_THREADS": str(threads)})
    scores = json.loads((out / "fidelity.json").read_text())
    keys = ("n_synthetic", "fd_seg", "kid_seg", "mask_faithfulness", "real_dice", "diversity", "paired")
    return {k: scores[k] for k in keys if k in scores}


def dice_cells(summary: dict, structure: str) -> str:
    """'ED / ES' mean Dice of one structure from a seg_utility metrics summary."""
    cells = [summary.get(f"{phase}/dice_{structure}", {}).get("mean", float("nan")) for phase in ("ED", "ES")]
    return " / ".join(f"{c:.3f}" for c in cells)


def strongest_attack(audit: dict) -> str:
    """The white-box attack with the highest ROC AUC in an audit.json, with its 95 % interval."""
    name, m = max(audit["membership"].items(), key=lambda kv: kv[1]["auc"]["value"])
    return f"{name} {m['auc']['value']:.2f} [{m['auc']['ci95'][0]:.2f}, {m['auc']['ci95'][1]:.2f}]"


def sweep_table(rows: list[dict]) -> str:
    """Markdown table of sampler settings: NFE, seconds per slice and fidelity scored by the real-only segmenter."""
    lines = ["| generator | sampler | NFE | s / slice | faithfulness Dice LV / MYO / RV | FD x100 | KID x10^4 | SSIM to real | pairwise MS-SSIM (lower = more varied) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, paired = r["mask_faithfulness"], r.get("paired") or {}
        steps = f"-{r['steps']}" if r["steps"] else ""
        lines.append(f"| {r['generator']} | {r['sampler']}{steps} | {r['nfe']} | {r['seconds_per_slice']:.3f} | "
                     f"{m['lv']:.3f} / {m['myo']:.3f} / {m['rv']:.3f} | {100 * r['fd_seg']:.2f} | {1e4 * r['kid_seg']:.2f} | "
                     f"{paired.get('ssim', float('nan')):.3f} | {r['diversity']['synthetic']:.3f} |")
    return "\n".join(lines)


def audit_generator(bundle: str, generator_root: Path, real: Path, synthetic: Path, scorer: Path, folder: Path, threads: int) -> dict:
    """privacy_audit of one generator bundle into ``folder`` (skipped when it holds an audit.json); the same config
    for every generator, only its bundle and root change. Returns the audit without its per-image leakage list."""
    from cmrsynth.bundle_run import run_bundle

    if not (folder / "audit.json").is_file():
        run_bundle(REPO / "bundles" / "privacy_audit", ["audit.yaml"], folder.parent, {
            "generator_bundle": str(REPO / "bundles" / bundle), "generator_root": str(generator_root), "real_datalist": str(real),
            "synthetic_datalist": str(synthetic), "output_dir": str(folder), "feature_encoder_root": str(scorer),
            "feature_encoder_bundle": str(SEG_UTILITY)}, log=folder.parent / f"{folder.name}.log", env={"OMP_NUM_THREADS": str(threads)})
    audit = json.loads((folder / "audit.json").read_text())
    audit["leakage"].pop("synthetic_to_train", None)
    return audit


def comparison_table(columns: dict[str, str], first_rows: list[tuple[str, object]], pick: dict[str, dict], utility: dict,
                     privacy: dict | None = None) -> str:
    """Generators side by side: ``first_rows`` ((label, cell function of the bundle)), then sampling cost and fidelity
    of each generator's ``pick`` (its sweep row), segmenter utility, privacy, and the segmenter baselines.

    Args:
        columns: bundle name -> column header.
        utility: seg_utility results by mode ("real", "few10", "synthetic (<bundle>)", "few10+syn (<bundle>)").
        privacy: audit.json contents by bundle, or None.
    """
    rows = [f"| | {' | '.join(columns.values())} |", "|---" * (len(columns) + 1) + "|"]
    line = lambda label, f: rows.append(f"| {label} | " + " | ".join(f(b) for b in columns) + " |")  # noqa: E731
    for label, cell in first_rows:
        line(label, cell)
    line("NFE, seconds per slice", lambda b: f"{pick[b]['nfe']}, {pick[b]['seconds_per_slice']:.3f}")
    line("mask faithfulness Dice LV / MYO / RV (real test masks)",
         lambda b: " / ".join(f"{pick[b]['mask_faithfulness'][k]:.3f}" for k in ("lv", "myo", "rv")))
    line("FD x100 / KID x10^4 on segmenter features (real test masks)",
         lambda b: f"{100 * pick[b]['fd_seg']:.2f} / {1e4 * pick[b]['kid_seg']:.2f}")
    line("SSIM to the real image of the same mask", lambda b: f"{(pick[b].get('paired') or {}).get('ssim', float('nan')):.3f}")
    for mode in ("synthetic-only", "few10+syn"):
        key = "synthetic" if mode == "synthetic-only" else mode
        for structure in ("lv", "rv"):
            line(f"{mode} segmenter, Dice {structure.upper()} ED / ES", lambda b: dice_cells(utility[f"{key} ({b})"]["summary"], structure))
    if privacy:
        line("strongest white-box attack, ROC AUC [95 % CI]", lambda b: strongest_attack(privacy[b]))
        line("reconstruction attack (RMS), ROC AUC", lambda b: f"{privacy[b]['reconstruction']['membership']['neg_rms']['auc']['value']:.2f}")
        line("near copies, pixel / feature space", lambda b: " / ".join(
            f"{privacy[b]['leakage'][s]['near_copies']} of {privacy[b]['leakage'][s]['synthetic']}" for s in ("pixel", "feature")
            if s in privacy[b]["leakage"]))
    u = utility
    rows += ["", f"Baselines: real-only segmenter Dice LV ED / ES {dice_cells(u['real']['summary'], 'lv')}, RV "
             f"{dice_cells(u['real']['summary'], 'rv')}; few10 LV {dice_cells(u['few10']['summary'], 'lv')}, RV {dice_cells(u['few10']['summary'], 'rv')}."]
    return "\n".join(rows)


def sampler_sweep(settings: list[tuple], roots: dict[str, Path], real: Path, scorer: Path, folder: Path, seed: int,
                  threads: int, bundles: dict[str, str] | None = None) -> list[dict]:
    """Each (generator, sampler, steps) draws images for the real test masks into ``folder``: NFE, seconds per slice
    and fidelity scored by the real-only segmenter at ``scorer`` (settings already drawn are read back).

    A generator is a key of ``roots`` (its run folder) and names its bundle, unless ``bundles`` maps it to another
    (e.g. a second run folder of the same bundle holding other weights).
    """
    rows = []
    for key, sampler, steps in settings:
        name = f"{key}_{sampler}{steps or ''}"
        datalist = draw_images(roots[key], real, "test", folder / name, seed, threads, (bundles or {}).get(key, key),
                               {"sampler": sampler, "num_inference_steps": steps})
        summary = json.loads(datalist.read_text())["summary"]
        rows.append({"generator": key, "sampler": sampler, "steps": steps, "nfe": summary["nfe"],
                     "seconds_per_slice": round(summary["seconds_per_image"], 4),
                     **score_fidelity(datalist, real, scorer, folder / "fidelity" / name, seed, threads)})
    return rows

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
"""Benchmark of synthetic-data utility and fidelity on real ACDC (CPU preset, 64x64): seg_utility trained per mode,
scored on the 10 real test patients per patient volume; each generator scored with the real-only segmenter.

Needs the generator benchmarks' trained bundles in the same --work folder (scripts/benchmark_mask_generator.py,
scripts/benchmark_ddpm_cmr.py). Modes (--modes; results merge into bundles/seg_utility/docs/benchmark.json):
- real: the 50 real train patients (baseline; its model is the fidelity scorer)
- synthetic: synthetic images only (ddpm_cmr DDIM-50 on mask_generator masks)
- synthetic-untrained: the same masks drawn by an untrained ddpm_cmr (sanity row)
- synthetic-dp: the same masks drawn by the DP-SGD ddpm_cmr of scripts/benchmark_privacy_audit.py --dp-minutes
- mixed: real + synthetic, one synthetic slice per real slice
- fewN / fewN+syn: N real patients (round-robin over groups), without / with the synthetic set
- <mode>@<seed>: the same mode with another segmenter seed (its own run folder); modes trained at several seeds get
  a seed-spread table (mean ± sd across seeds), the noise any Dice difference between rows is read against

    python scripts/benchmark_seg_utility.py --work runs/bench3 --make-synthetic 14 --steps 700
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cmrsynth.benchmark import REPO, draw_images, machine, parser, prepared_acdc, replace_marked, untrained_generator, write_benchmark
from cmrsynth.bundle_run import run_bundle, trainer_progress

BUNDLE = REPO / "bundles" / "seg_utility"
GENERATORS = REPO / "bundles"
MNMS2 = REPO.parent / "shared" / "data" / "mnms2_sample"


def make_synthetic(work: Path, per_class: int, args) -> dict[str, Path]:
    """Masks from the benchmark's mask_generator, drawn by the trained and by an untrained ddpm_cmr."""
    masks = work / "synthetic" / "masks"
    if not (masks / "datalist.json").is_file():
        masks.parent.mkdir(parents=True, exist_ok=True)
        run_bundle(GENERATORS / "mask_generator", ["common.yaml", "inference.yaml"], work / "mask_generator",
                   {"per_class": per_class, "output_dir": str(masks), "seed": args.seed + 1},
                   log=work / "synthetic" / "masks.log", env={"OMP_NUM_THREADS": str(args.threads)})
    untrained = untrained_generator(work / "ddpm_cmr_untrained", args.seed)
    sets = {"trained": draw_images(work / "ddpm_cmr", masks / "datalist.json", "synthetic", work / "synthetic" / "images",
                                   args.seed + 1, args.threads),
            "untrained": draw_images(untrained, masks / "datalist.json", "synthetic", work / "synthetic" / "untrained",
                                     args.seed + 1, args.threads)}
    if (work / "synthetic" / "dp" / "datalist.json").is_file():  # drawn by scripts/benchmark_privacy_audit.py --dp-minutes
        sets["dp"] = work / "synthetic" / "dp" / "datalist.json"
    return sets


def sources(mode: str, real: Path, synthetic: dict[str, Path]) -> list[dict]:
    """The training sources of a mode."""
    real_src = {"datalist": str(real), "key": "training"}
    # real-only modes run without the generator benchmarks' images
    syn_src = {"datalist": str(synthetic["trained"]), "key": "training"} if needs_synthetic(mode) else None
    if mode == "real":
        return [real_src]
    if mode == "synthetic":
        return [syn_src]
    if mode in ("synthetic-untrained", "synthetic-dp"):
        return [{"datalist": str(synthetic[mode.split("-")[1]]), "key": "training"}]
    if mode == "mixed":
        return [real_src, {**syn_src, "ratio": 1.0}]
    if mode.startswith("few"):
        k = int(mode[3:].split("+")[0])
        return [{**real_src, "patients": k}] + ([syn_src] if mode.endswith("+syn") else [])
    raise ValueError(f"unknown mode {mode!r}; allowed: real, synthetic, synthetic-untrained, synthetic-dp, mixed, fewN, fewN+syn")


def evaluate(root: Path, datalist: Path, key: str, name: str, threads: int) -> dict:
    """Score a trained seg_utility root on one real datalist section (per patient volume)."""
    out = root / "eval" / name
    run_bundle(BUNDLE, ["common.yaml", "evaluate.yaml"], root, {"real_datalist": str(datalist), "eval_key": key,
               "eval_dir": str(out)}, log=root / f"{name}.log", env={"OMP_NUM_THREADS": str(threads)})
    metrics = json.loads((out / "metrics.json").read_text())
    return {"patients": metrics["patients"], "slices": metrics["slices"], "summary": metrics["summary"]}


def needs_synthetic(mode: str) -> bool:
    """Whether a mode (``<mode>[@<seed>]``) trains on generated images."""
    base = mode.partition("@")[0]
    return not (base == "real" or (base.startswith("few") and not base.endswith("+syn")))


def run_mode(mode: str, args, real: Path, synthetic: dict[str, Path], work: Path) -> dict:
    """Train seg_utility for one mode (``<mode>[@<seed>]``) within the budget and score it on the real test patients."""
    base, _, seed = mode.partition("@")
    root = work / "seg_utility" / mode
    root.mkdir(parents=True, exist_ok=True)
    # fixed steps (50-step epochs) so a busy or slower machine changes the wall time, not the result; --minutes is a
    # safety net on top
    train = {"real_datalist": str(real), "sources": sources(base, real, synthetic), "max_epochs": args.steps // 50,
             "epoch_length": 50, "max_minutes": args.minutes, "seed": int(seed) if seed else args.seed, "progress_bar": False}
    t0 = time.perf_counter()
    run_bundle(BUNDLE, ["common.yaml", "train.yaml"], root, train, log=root / "train.log",
               env={"OMP_NUM_THREADS": str(args.threads)})
    wall = time.perf_counter() - t0
    composed = json.loads((root / "models" / "training_set.json").read_text())["training"]
    result = {"seed": train["seed"], "measured": {"date": time.strftime("%Y-%m-%d"), "threads": args.threads},
              "sources": [{**s, "datalist": _short(s["datalist"], work)} for s in train["sources"]],
              "training_slices": len(composed), "training_wall_seconds": round(wall, 1),
              **trainer_progress(root / "models" / "checkpoint_final.pt"),
              "acdc_test": evaluate(root, real, "test", "acdc_test", args.threads)}
    if base == "real" and MNMS2.is_dir():
        result["mnms2_sample_cross_dataset"] = evaluate(root, prepared_mnms2(work), "test", "mnms2", args.threads)
    return result


def prepared_mnms2(work: Path) -> Path:
    """The M&Ms-2 sample prepared like ACDC, every patient in the test section (cross-dataset evaluation)."""
    from cmrsynth.data.mnms import read_mnms2
    from cmrsynth.data.prepare import PrepareConfig, prepare_cohort

    out = work / "mnms2_64"
    if not (out / "datalist.json").is_file():
        prepare_cohort(read_mnms2(MNMS2), out, PrepareConfig(size=64, fractions=(0.0, 0.0, 1.0)))
    return out / "datalist.json"


def _short(path: str | Path, work: Path) -> str:
    p = Path(path)
    return str(p.relative_to(work)) if p.is_relative_to(work) else str(p)


def fidelity(args, real: Path, synthetic: dict[str, Path], work: Path, done: dict) -> dict:
    """Each image set scored with the real-only segmenter against the real test slices (sets in ``done`` kept)."""
    scorer = work / "seg_utility" / "real"
    untrained = untrained_generator(work / "ddpm_cmr_untrained", args.seed)
    sets = {
        "ddpm_cmr, real test masks (DDIM-50)": (work / "ddpm_cmr" / "eval" / "ddim50" / "datalist.json", "training"),
        "untrained ddpm_cmr, real test masks (sanity)": (draw_images(untrained, real, "test", work / "fidelity_untrained_test", args.seed + 1, args.threads), "training"),
        "ddpm_cmr on mask_generator masks": (synthetic["trained"], "training"),
        "untrained ddpm_cmr on mask_generator masks (sanity)": (synthetic["untrained"], "training"),
        "real validation slices (reference)": (real, "validation"),
    }
    if "dp" in synthetic:
        sets["DP-SGD ddpm_cmr on mask_generator masks"] = (synthetic["dp"], "training")
    out = dict(done)
    for name, (datalist, key) in sets.items():
        if name in out:
            continue
        folder = scorer / "eval" / "fidelity" / name.split(" (")[0].replace(" ", "_").replace(",", "")
        run_bundle(BUNDLE, ["common.yaml", "fidelity.yaml"], scorer,
                   {"real_datalist": str(real), "synthetic_datalist": str(datalist), "synthetic_key": key,
                    "fidelity_dir": str(folder), "seed": args.seed}, log=scorer / "fidelity.log",
                   env={"OMP_NUM_THREADS": str(args.threads)})
        scores = json.loads((folder / "fidelity.json").read_text())
        out[name] = {k: v for k, v in scores.items() if k not in ("real_datalist", "synthetic_datalist")}
        out[name]["synthetic_datalist"] = _short(datalist, work)
    return out


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.set_defaults(minutes=30.0, threads=2)
    p.add_argument("--steps", type=int, default=700, help="training steps of every segmenter (as scripts/benchmark_fm_cmr.py)")
    p.add_argument("--modes", default="real,synthetic,synthetic-untrained,mixed,few5,few5+syn,few10,few10+syn")
    p.add_argument("--make-synthetic", type=int, default=14, help="masks per mask_generator class in the synthetic set")
    p.add_argument("--skip-fidelity", action="store_true")
    p.add_argument("--refresh-fidelity", action="store_true", help="rescore image sets already in benchmark.json")
    p.add_argument("--render", action="store_true", help="write the tables into docs/README.md")
    args = p.parse_args()
    path = BUNDLE / "docs" / "benchmark.json"
    if args.stage == "render":
        render(json.loads(path.read_text()))
        return
    work = Path(args.work)
    real = prepared_acdc(work / "acdc64", 64) / "datalist.json"
    modes = args.modes.split(",")
    # only modes with generated images (and the fidelity table) need the generator benchmarks' runs in --work
    needed = not args.skip_fidelity or any(map(needs_synthetic, modes))
    synthetic = make_synthetic(work, args.make_synthetic, args) if needed else {}
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.setdefault("modes", {})
    result.update({"bundle": "seg_utility", "data": "ACDC (../shared/data/acdc), 64x64 CPU preset, seed-0 split: "
                   "train 50 / val 10 / test 10 patients; scored per patient volume on the 10 test patients",
                   "machine": machine(), "threads": args.threads, "steps_per_mode": args.steps})
    if synthetic:
        result.update({"synthetic_set": {k: _short(v, work) for k, v in synthetic.items()},
                       "synthetic_masks_per_class": args.make_synthetic})
    for mode in modes:
        result["modes"][mode] = run_mode(mode, args, real, synthetic, work)
        result["finished"] = time.strftime("%Y-%m-%d %H:%M")
        write_benchmark(path, result)
    import shutil

    for mode in ("real", "synthetic", "mixed"):
        png = work / "seg_utility" / mode / "eval" / "acdc_test" / "predictions.png"
        if png.is_file():
            shutil.copy(png, BUNDLE / "docs" / f"predictions_{mode}.png")
    if not args.skip_fidelity:
        result["fidelity"] = fidelity(args, real, synthetic, work, {} if args.refresh_fidelity else result.get("fidelity", {}))
        result["finished"] = time.strftime("%Y-%m-%d %H:%M")
        write_benchmark(path, result)
    if args.render:
        render(result)
    print(utility_table(result))
    print(seed_spread_table(result))
    print(fidelity_table(result))


def render(result: dict) -> None:
    """Write the utility and fidelity tables into docs/README.md."""
    replace_marked(BUNDLE / "docs" / "README.md", "utility-table", utility_table(result))
    replace_marked(BUNDLE / "docs" / "README.md", "seed-spread", seed_spread_table(result))
    replace_marked(BUNDLE / "docs" / "README.md", "fidelity-table", fidelity_table(result))


def _cell(summary: dict, key: str, digits: int = 3) -> str:
    s = summary.get(key)
    return "n/a" if s is None or s["mean"] != s["mean"] else f"{s['mean']:.{digits}f}"


def utility_table(result: dict) -> str:
    """Markdown table of the modes: Dice per structure and phase, HD95 and LV EF error on the real test patients."""
    rows = ["| mode | training slices | steps | Dice LV ED / ES | Dice MYO ED / ES | Dice RV ED / ES | HD95 LV ED (mm) | LV EF error (points, mean ± sd) |",
            "|---|---|---|---|---|---|---|---|"]
    for mode, r in result["modes"].items():
        s = r["acdc_test"]["summary"]
        dice = [f"{_cell(s, f'ED/dice_{k}')} / {_cell(s, f'ES/dice_{k}')}" for k in ("lv", "myo", "rv")]
        ef = s.get("lv_ef_error", {"mean": float("nan"), "sd": float("nan")})
        rows.append(f"| {mode} | {r['training_slices']} | {r['iteration']} | " + " | ".join(dice)
                    + f" | {_cell(s, 'ED/hd95_lv', 1)} | {ef['mean']:.1f} ± {ef['sd']:.1f} |")
    return "\n".join(rows)


CELLS = [f"{phase}/dice_{k}" for k in ("lv", "myo", "rv") for phase in ("ED", "ES")]


def seed_spread_table(result: dict) -> str:
    """Markdown table: for each mode trained at several seeds (``<mode>@<seed>``), the mean ± sd across seeds of its
    test Dice per structure and phase, and the largest sd of any cell."""
    groups: dict[str, list[dict]] = {}
    for mode, r in result["modes"].items():
        if "@" in mode:
            groups.setdefault(mode.partition("@")[0], []).append(r)
    rows = ["| mode | seeds | steps | Dice LV ED / ES | Dice MYO ED / ES | Dice RV ED / ES | largest sd |", "|---|---|---|---|---|---|---|"]
    for base, runs in groups.items():
        if len(runs) < 2:
            continue
        values = np.array([[r["acdc_test"]["summary"][c]["mean"] for c in CELLS] for r in runs])
        mean, sd = values.mean(0), values.std(0, ddof=1)
        cells = [f"{mean[i]:.3f} ± {sd[i]:.3f} / {mean[i + 1]:.3f} ± {sd[i + 1]:.3f}" for i in (0, 2, 4)]
        seeds, steps = ", ".join(str(r["seed"]) for r in runs), "/".join(sorted({str(r["iteration"]) for r in runs}))
        rows.append(f"| {base} | {seeds} | {steps} | " + " | ".join(cells) + f" | {sd.max():.3f} ({CELLS[int(sd.argmax())]}) |")
    return "\n".join(rows)


def fidelity_table(result: dict) -> str:
    """Markdown table of the fidelity scores of each image set."""
    rows = ["| image set | n | FD (seg features) x100 | KID x10^4 | faithfulness Dice LV / MYO / RV | SSIM | MS-SSIM | PSNR (dB) | diversity (MS-SSIM) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, f in result.get("fidelity", {}).items():
        m = f["mask_faithfulness"]
        p = f.get("paired")
        paired = " | ".join(f"{p[k]:.3f}" if k != "psnr" else f"{p[k]:.1f}" for k in ("ssim", "ms_ssim", "psnr")) if p else "- | - | -"
        rows.append(f"| {name} | {f['n_synthetic']} | {100 * f['fd_seg']:.2f} | {1e4 * f['kid_seg']:.2f} | "
                    f"{m['lv']:.3f} / {m['myo']:.3f} / {m['rv']:.3f} | {paired} | {f['diversity']['synthetic']:.3f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()

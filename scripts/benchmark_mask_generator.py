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
"""Benchmark of the mask_generator bundle on real ACDC (CPU preset, 64x64): the recipe against its one-hot control.

Trains two mask generators for the same fixed number of steps on the 50 train patients, side by side on one thread
each: the bundle's default (nested signed distance maps, class per group x phase x slice position) and the same
recipe on one-hot masks (the codec the bundle used before). Both sample masks per class with DDIM; each set is
compared with the real test patients' masks: plausibility before and after post-processing beside the real test
rate, per group x phase and per slice position; 1-D Wasserstein distances of LV area, myocardial thickness, RV/LV
ratio, LV circularity and RV area, beside the same distance between the real train and real test masks; diversity
(mean pairwise Dice within a stratum) and near copies of training masks (the audit's mask check). Then ddpm_cmr
(weights of scripts/benchmark_fm_cmr.py) draws an image for every plausible mask of the default recipe, and
seg_utility trains a synthetic-only segmenter on them, scored on the real test patients beside the row of the
previous masks. Writes bundles/mask_generator/docs/benchmark.json, figures and the docs table.

    python scripts/benchmark_mask_generator.py --work runs/bench
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from cmrsynth.audit import mask_copies
from cmrsynth.benchmark import (REPO, dice_cells, draw_images, load_section, machine, parser, prepared_acdc, replace_marked, train_segmenter,
                                training_facts, write_benchmark)
from cmrsynth.bundle_run import run_bundle, trainer_progress
from cmrsynth.data.atomic import write_json_atomic
from cmrsynth.labels import SLICE_LEVELS
from cmrsynth.masks import STAT_KEYS, mean_pairwise_dice, plausibility, shape_distances, shape_stats, slice_level_of
from cmrsynth.report import save_overlay_grid

BUNDLE = REPO / "bundles" / "mask_generator"
#: the recipes compared: config overrides on top of the bundle's defaults
RECIPES = {"signed_distance": {}, "one_hot": {"codec": {"_target_": "cmrsynth.generative.IdentityCodec"}}}


def train_fixed(name: str, data: Path, root: Path, args) -> dict:
    """Train one recipe for ``args.epochs`` 200-step epochs (skipped when its final checkpoint exists)."""
    final = root / "models" / "checkpoint_final.pt"
    if not final.is_file():
        root.mkdir(parents=True, exist_ok=True)
        run_bundle(BUNDLE, ["common.yaml", "train.yaml"], root,
                   {"dataset_dir": str(data), "max_epochs": args.epochs, "seed": args.seed, "progress_bar": False,
                    **RECIPES[name]}, log=root / "train.log", env={"OMP_NUM_THREADS": "1"})
    return {"recipe": name, "overrides": RECIPES[name], **trainer_progress(final), **training_facts(root)}


def sample(name: str, root: Path, args) -> Path:
    """A recipe's masks: ``args.per_class`` per (group, phase, position) with DDIM, implausible ones kept and
    flagged (skipped when drawn already); returns the datalist."""
    out = root / "eval" / "masks"
    if not (out / "datalist.json").is_file():
        run_bundle(BUNDLE, ["common.yaml", "inference.yaml"], root,
                   {"per_class": args.per_class, "num_inference_steps": args.steps, "output_dir": str(out),
                    "keep_implausible": True, "seed": args.seed + 1, **RECIPES[name]},
                   log=root / "inference.log", env={"OMP_NUM_THREADS": str(args.threads)})
    return out / "datalist.json"


def stratum(entry: dict) -> str:
    """group/phase of an entry."""
    return f"{entry['group']}/{entry['phase']}"


def _rates(entries: list[dict], key: str, by) -> dict[str, float]:
    groups: dict[str, list[bool]] = {}
    for e in entries:
        groups.setdefault(by(e), []).append(bool(e[key]))
        groups.setdefault("all", []).append(bool(e[key]))
    return {k: float(np.mean(v)) for k, v in sorted(groups.items())}


def plausibility_table(generated: list[dict], real: list[dict]) -> dict:
    """Plausibility rates before / after post-processing (generated) and of the real masks, per group x phase and
    per slice position."""
    real = [{**e, "plausible": plausibility(e["mask"])["plausible"]} for e in real]
    return {by_name: {"generated_before_postprocessing": _rates(generated, "plausible_before_postprocessing", by),
                      "generated": _rates(generated, "plausible", by), "real_test": _rates(real, "plausible", by)}
            for by_name, by in (("group_phase", stratum), ("position", slice_level_of))}


def diversity(generated: list[np.ndarray], gen_entries: list[dict], real: list[dict]) -> dict:
    """Mean pairwise Dice within each group x phase, generated (plausible masks) beside real test masks."""
    out = {}
    for key in sorted({stratum(e) for e in real}):
        gen = [m for m, e in zip(generated, gen_entries) if stratum(e) == key]
        out[key] = {"generated": mean_pairwise_dice(np.stack(gen)) if len(gen) > 1 else float("nan"),
                    "real_test": mean_pairwise_dice(np.stack([e["mask"] for e in real if stratum(e) == key]))}
    return out


def evaluate(datalist: Path, data: Path, real_test: list[dict], real_train: list[dict]) -> dict:
    """Compare one recipe's masks with the real test masks (and the real train-vs-test reference)."""
    synthetic = json.loads(datalist.read_text())
    entries = synthetic["synthetic"]
    masks = [np.asanyarray(nib.load(datalist.parent / e["label"]).dataobj).astype(np.int64) for e in entries]
    plausible = [(m, e) for m, e in zip(masks, entries) if e["plausible"]]
    spacing = real_test[0]["spacing"][0]
    real_stats = lambda es, by: [(by(e), shape_stats(e["mask"], spacing)) for e in es]  # noqa: E731
    gen_stats = lambda by: [(by(e), {k: e[k] for k in STAT_KEYS}) for _, e in plausible]  # noqa: E731
    holdout = load_section(data, "validation") + real_test
    copies, threshold = mask_copies([{"mask": m} for m, _ in plausible], real_train, holdout, quantile=0.01)
    return {
        "summary": synthetic["summary"],
        "plausibility": plausibility_table(entries, real_test),
        "shape_wasserstein": {by_name: {"generated_vs_real_test": shape_distances(test, gen_stats(by)),
                                        "real_train_vs_real_test": shape_distances(test, real_stats(real_train, by))}
                              for by_name, by in (("group_phase", stratum), ("position", slice_level_of))
                              for test in [real_stats(real_test, by)]},  # the test statistics once per stratification
        "diversity_mean_pairwise_dice": diversity([m for m, _ in plausible], [e for _, e in plausible], real_test),
        "near_copies_of_training_masks": {"count": int((copies > threshold).sum()), "of": len(plausible),
                                          "dice_threshold": threshold,
                                          "rule": "Dice to the nearest training mask above the 99th percentile of "
                                                  "held-out (validation + test) masks' nearest-training Dice"},
    }


def figure(datalist: Path, real_test: list[dict]) -> Path:
    """Generated (plausible) beside real test masks: one column per group x phase, rows basal / mid / apical."""
    entries = [e for e in json.loads(datalist.read_text())["synthetic"] if e["plausible"]]
    columns = sorted({stratum(e) for e in real_test})
    tiles, titles = [], []
    for level in SLICE_LEVELS:
        for source, pool in (("generated", entries), ("real", real_test)):
            for column in columns:
                hit = next((e for e in pool if stratum(e) == column and slice_level_of(e) == level), None)
                mask = (np.zeros((64, 64), np.int64) if hit is None else hit["mask"] if "mask" in hit
                        else np.asanyarray(nib.load(datalist.parent / hit["label"]).dataobj))
                tiles.append(mask)
                titles.append(f"{source} {column} {level}")
    path = BUNDLE / "docs" / "masks_generated_vs_real.png"
    save_overlay_grid([np.zeros(t.shape, np.float32) for t in tiles], tiles, path, titles, ncols=len(columns), tile_inches=1.4)
    return path


def utility(work: Path, datalist: Path, real: Path, args) -> dict:
    """ddpm_cmr's images of the plausible masks; seg_utility trained on them alone and added to 10 real patients,
    scored on the real test patients."""
    plausible = datalist.with_name("plausible.json")
    if not plausible.is_file():
        data = json.loads(datalist.read_text())
        write_json_atomic(plausible, {**data, "synthetic": [e for e in data["synthetic"] if e["plausible"]]})
    images = draw_images(work / "ddpm_cmr", plausible, "synthetic", work / "synthetic_masks13" / "ddpm_cmr", args.seed + 1,
                         args.threads)
    syn, few10 = {"datalist": str(images), "key": "training"}, {"datalist": str(real), "key": "training", "patients": 10}
    folder = work / "seg_utility_masks13"
    return {"images": str(images.relative_to(work)),
            "synthetic (ddpm_cmr), new masks": train_segmenter(folder / "synthetic_ddpm_cmr", [syn], real, args.seg_steps,
                                                               args.seed, args.threads),
            "few10+syn (ddpm_cmr), new masks": train_segmenter(folder / "few10+syn_ddpm_cmr", [few10, syn], real, args.seg_steps,
                                                               args.seed, args.threads)}


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.set_defaults(threads=2)
    p.add_argument("--epochs", type=int, default=20, help="200-step epochs of each recipe (4,000 steps)")
    p.add_argument("--per-class", type=int, default=14, help="masks per (group, phase, position): 420 in all")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--seg-steps", type=int, default=700, help="steps of each segmenter (as scripts/benchmark_fm_cmr.py)")
    args = p.parse_args()
    path = BUNDLE / "docs" / "benchmark.json"
    if args.stage == "render":
        render(json.loads(path.read_text()))
        return
    work = Path(args.work)
    data = prepared_acdc(work / "acdc64", 64)
    result = {"bundle": "mask_generator", "machine": machine(), "seed": args.seed,
              "data": "ACDC (../shared/data/acdc), 64x64 CPU preset, seed-0 split: train 50 / val 10 / test 10 patients"}
    roots = {name: work / f"mask_generator_{name}" for name in RECIPES}
    with ThreadPoolExecutor(len(RECIPES)) as pool:  # one thread each: the comparison shares the machine evenly
        result["training"] = dict(zip(RECIPES, pool.map(lambda n: train_fixed(n, data, roots[n], args), RECIPES)))
    write_benchmark(path, result)
    real = data / "datalist.json"
    real_test, real_train = load_section(data, "test"), load_section(data, "training")
    datalists = {name: sample(name, roots[name], args) for name in RECIPES}
    result["sampling"] = {"sampler": f"DDIM-{args.steps}", "per_class": args.per_class, "threads": args.threads}
    result["evaluation"] = {name: evaluate(d, data, real_test, real_train) for name, d in datalists.items()}
    result["figure"] = str(figure(datalists["signed_distance"], real_test).relative_to(REPO))
    write_benchmark(path, result)
    result["utility"] = utility(work, datalists["signed_distance"], real, args)
    fm = json.loads((REPO / "bundles" / "fm_cmr" / "docs" / "benchmark.json").read_text())
    for row in ("synthetic (ddpm_cmr)", "few10+syn (ddpm_cmr)"):
        result["utility"][f"{row}, previous masks"] = fm["utility"][row]
    result["utility"].update({row: fm["utility"][row] for row in ("real", "few10")})
    result["finished"] = time.strftime("%Y-%m-%d %H:%M")
    write_benchmark(path, result)
    render(result)


STAT_NAMES = {"lv_area": "LV area (mm²)", "myo_thickness": "myo thickness (mm)", "rv_lv_ratio": "RV/LV ratio",
              "lv_circularity": "LV circularity", "rv_area": "RV area (mm²)"}


def _pct(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.0%}"


def _w1(gen: dict, ref: dict, key: str) -> str:
    g, r = gen.get(key), ref.get(key)
    return "–" if g is None or r is None else f"{g:.3g} ({r:.3g})"


def aims(e: dict, utility: dict) -> list[str]:
    """The issue's aims, each marked met or not met from the measured numbers."""
    rates = e["plausibility"]["group_phase"]
    groups = [k for k in rates["real_test"] if k != "all"]
    short = [g for g in groups if rates["generated"][g] < 0.8 or rates["generated"][g] < rates["real_test"][g] - 0.05]
    finite = lambda x: x is not None and np.isfinite(x)  # noqa: E731
    pairs = [(row.get(stat), d["real_train_vs_real_test"].get(k, {}).get(stat)) for d in e["shape_wasserstein"].values()
             for k, row in d["generated_vs_real_test"].items() for stat in STAT_KEYS]
    pairs = [(g, ref) for g, ref in pairs if finite(ref)]
    far = [g for g, ref in pairs if not finite(g) or g > 1.5 * ref]  # no generated mask in a stratum counts as far
    cells = [(phase, s) for phase in ("ED", "ES") for s in ("lv", "myo", "rv")]
    new, old = (utility[k]["summary"] for k in ("synthetic (ddpm_cmr), new masks", "synthetic (ddpm_cmr), previous masks"))
    down = [f"{s.upper()} {ph}" for ph, s in cells if new[f"{ph}/dice_{s}"]["mean"] <= old[f"{ph}/dice_{s}"]["mean"]]
    return ["- plausibility >= 80 % and within 5 points of the real rate in every group x phase: "
            + ("**met**" if not short else f"**not met** in {len(short)} of {len(groups)} ({', '.join(short)})"),
            "- every shape distance within 1.5x the real-train-vs-real-test distance: "
            + ("**met**" if not far else f"**not met** for {len(far)} of {len(pairs)} (stratum, statistic) cells"),
            "- synthetic-only Dice up on every structure and phase: "
            + ("**met**" if not down else f"**not met** ({', '.join(down)} not up)")]


def results_markdown(r: dict) -> str:
    """The docs tables rendered from benchmark.json."""
    ev, tr, default = r["evaluation"], r["training"], "signed_distance"
    lines = [f"Measured on {r['finished'][:10]}, {r['data']}; {r['machine']['cores']} CPU cores. Both recipes trained "
             f"side by side, one thread each, for the same fixed steps; masks drawn with {r['sampling']['sampler']}, "
             f"{r['sampling']['per_class']} per (group, phase, position), threads: {r['sampling']['threads']}.", "",
             "| | " + " | ".join(f"`{n}`" + (" (default)" if n == default else "") for n in ev) + " | real test masks |",
             "|---|" + "---|" * (len(ev) + 1),
             "| training | " + " | ".join(f"{t['iteration']} steps, {t['training_wall_seconds'] / 60:.0f} min, "
                                         f"{t['seconds_per_step']:.2f} s/step" for t in tr.values()) + " | |",
             "| plausible before post-processing | " + " | ".join(
                 _pct(e["plausibility"]["group_phase"]["generated_before_postprocessing"]["all"]) for e in ev.values())
             + f" | {_pct(ev[default]['plausibility']['group_phase']['real_test']['all'])} |",
             "| **plausible after post-processing** | " + " | ".join(
                 f"**{_pct(e['plausibility']['group_phase']['generated']['all'])}**" for e in ev.values()) + " | |",
             "| failed checks (after) | " + " | ".join(str(e["summary"]["failed_checks"]) for e in ev.values()) + " | |"]
    for stat in STAT_KEYS:
        ref = ev[default]["shape_wasserstein"]["group_phase"]["real_train_vs_real_test"]["all"]
        lines.append(f"| W1 {STAT_NAMES[stat]}, all | " + " | ".join(
            f"{e['shape_wasserstein']['group_phase']['generated_vs_real_test']['all'][stat]:.3g}" for e in ev.values())
            + f" | {ref[stat]:.3g} (real train vs test) |")
    div = lambda e, side: np.nanmean([v[side] for v in e["diversity_mean_pairwise_dice"].values()])  # noqa: E731
    lines += ["| diversity: mean pairwise Dice within group x phase | " + " | ".join(f"{div(e, 'generated'):.3f}" for e in ev.values())
              + f" | {div(ev[default], 'real_test'):.3f} |",
              "| near copies of training masks (audit's mask rule) | " + " | ".join(
                  f"{e['near_copies_of_training_masks']['count']} of {e['near_copies_of_training_masks']['of']}" for e in ev.values()) + " | |",
              "| seconds per mask | " + " | ".join(f"{e['summary']['seconds_per_mask']:.3f}" for e in ev.values()) + " | |", ""]
    e = ev[default]
    for by, title in (("group_phase", "group / phase"), ("position", "slice position")):
        rates, w = e["plausibility"][by], e["shape_wasserstein"][by]
        lines += [f"`{default}` by {title}: plausibility before / after post-processing beside the real test rate; W1 to the "
                  "real test masks, with the real-train-vs-real-test distance in brackets.", "",
                  f"| {title} | n gen / real | plausible before / after | real | " + " | ".join(f"W1 {STAT_NAMES[k]}" for k in STAT_KEYS) + " |",
                  "|---|---|---|---|" + "---|" * len(STAT_KEYS)]
        for k, row in w["generated_vs_real_test"].items():
            if k == "unknown":
                continue
            lines.append(f"| {k} | {row['n_generated']} / {row['n_real']} | {_pct(rates['generated_before_postprocessing'].get(k))} / "
                         f"{_pct(rates['generated'].get(k))} | {_pct(rates['real_test'].get(k))} | "
                         + " | ".join(_w1(row, w["real_train_vs_real_test"].get(k, {}), s) for s in STAT_KEYS) + " |")
        lines.append("")
    u = r["utility"]
    lines += ["Segmenters (seg_utility, "
              f"{u['synthetic (ddpm_cmr), new masks']['iteration']} steps each) trained on ddpm_cmr DDIM-50 images of the plausible "
              "masks, alone and added to 10 real patients, scored per patient volume on the 10 real test patients; the previous "
              "masks' rows and the real baselines are scripts/benchmark_fm_cmr.py's (the same ddpm_cmr weights and segmenter "
              "recipe; its masks came from the one-hot mask generator of 3,000 steps, conditioned on group and phase).", "",
              "| training set | slices | LV ED / ES | MYO ED / ES | RV ED / ES |", "|---|---|---|---|---|"]
    for name in ("synthetic (ddpm_cmr), new masks", "synthetic (ddpm_cmr), previous masks", "few10+syn (ddpm_cmr), new masks",
                 "few10+syn (ddpm_cmr), previous masks", "few10", "real"):
        row = u[name]
        lines.append(f"| {name} | {row['training_slices']} | " + " | ".join(dice_cells(row["summary"], s) for s in ("lv", "myo", "rv")) + " |")
    lines += ["", "Aims of the issue:", *aims(e, u)]
    return "\n".join(lines)


def render(result: dict) -> None:
    """Rewrite the docs table from benchmark.json."""
    replace_marked(BUNDLE / "docs" / "README.md", "results", results_markdown(result))


if __name__ == "__main__":
    main()

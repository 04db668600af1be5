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
"""Screening of DP-SGD from ddpm_cmr's private-by-default start (the shipped phantom weights) on real ACDC (CPU
preset, 64x64): the non-DP default (phantom weights + 1,200 private steps) beside DP-SGD fine-tuning from the same
weights at (10, 1e-5) over 20 passes, at batch 16 (the earlier DP recipe's) and at an expected batch of 64 (less noise
per averaged gradient for the same budget, a quarter of the steps). Each generator draws one image per real mask of
the 10 validation patients (no mask generator was at hand; these patients are neither members nor test patients,
so no test label reaches a segmenter); a segmenter trained 700 steps on those images alone is scored on the
10 test patients, and the real-only segmenter scores their fidelity. No membership audit: DP's bound is epsilon.
The three generators are scripts/train_privacy_benchmark_generators.sh's ddpm_cmr_pre6, ddpm_cmr_dp_zoo_b16 and
ddpm_cmr_dp_zoo_b64 (fixed step counts; a rerun only evaluates).

    python scripts/screen_dp_public_start.py --work runs/bench_dp --scorer runs/bench_seeds/seg_utility/real@0
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmark_privacy_audit import BUNDLE, SEGMENTER_STEPS, _dice_gap, adopt_queue_log, dp_training_facts
from cmrsynth.benchmark import (dice_cells, draw_images, machine, parser, prepared_acdc, score_fidelity, train_segmenter,
                                training_facts, write_benchmark)

ROWS = {  # key: (label, run folder under --work, DP)
    "public_6": ("ddpm_cmr default: phantom weights + 1,200 private steps, no DP", "ddpm_cmr_pre6", False),
    "dp_b16": ("DP-SGD from the phantom weights, batch 16, 20 passes", "ddpm_cmr_dp_zoo_b16", True),
    "dp_b64": ("DP-SGD from the phantom weights, expected batch 64, 20 passes", "ddpm_cmr_dp_zoo_b64", True),
}
TRAINED_BY = ("scripts/train_privacy_benchmark_generators.sh (ddpm_cmr_pre6, ddpm_cmr_dp_zoo_b16, ddpm_cmr_dp_zoo_b64; "
              "one thread each)")


def screen_row(work: Path, key: str, real: Path, scorer: Path, seed: int, threads: int) -> dict:
    """One generator: how it trained, its images on the validation masks, their segmenter and fidelity."""
    label, folder, dp = ROWS[key]
    root = work / folder
    adopt_queue_log(work, folder)
    images = draw_images(root, real, "validation", work / "images" / key, seed + 1, threads, "ddpm_cmr",
                         {"ckpt_path": str(root / "models" / "best_ema.pt")})
    # laid out as the privacy benchmark's rows, so its helpers read them
    row = {"label": label, "root": folder, "training": training_facts(root), "images": {
        "images": str(images),
        "segmenter": train_segmenter(work / "segmenters" / key, [{"datalist": str(images), "key": "training"}], real,
                                     SEGMENTER_STEPS, seed, threads),
        "fidelity": score_fidelity(images, real, scorer, work / "fidelity" / key, seed, threads)}}
    if dp:
        row["dp_training"] = dp_training_facts(root, 1e-5)
    return row


def table(rows: dict) -> str:
    """Markdown: per row epsilon, steps, synthetic-only Dice per structure and phase, faithfulness, FD / KID, and the
    largest Dice gap below the non-DP default."""
    out = ["| generator | ε | steps | Dice LV ED / ES | Dice MYO ED / ES | Dice RV ED / ES | faithfulness LV / MYO / RV | "
           "FD x100 / KID x10^3 | largest gap below the default |", "|---|---|---|---|---|---|---|---|---|"]
    for key, r in rows.items():
        cell, gap, _ = _dice_gap(rows["public_6"], r)
        f, eps = r["images"]["fidelity"], r.get("dp_training", {}).get("epsilon")
        m = f["mask_faithfulness"]
        out.append(f"| {r['label']} | {f'{eps:.2f}' if eps is not None else '-'} | {r['training']['iteration']} | "
                   + " | ".join(dice_cells(r["images"]["segmenter"]["summary"], k) for k in ("lv", "myo", "rv"))
                   + f" | {m['lv']:.3f} / {m['myo']:.3f} / {m['rv']:.3f} | "
                   + f"{100 * f['fd_seg']:.2f} / {1e3 * f['kid_seg']:.2f} | "
                   + ("-" if key == "public_6" else f"{gap:.3f} ({cell})") + " |")
    return "\n".join(out)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--scorer", required=True, help="a real-only seg_utility run (700 steps) that scores fidelity")
    args = p.parse_args()
    work = Path(args.work)
    real = prepared_acdc(work / "acdc64", 64) / "datalist.json"
    path = BUNDLE / "docs" / f"screening_{time.strftime('%Y-%m-%d')}_dp.json"
    rows = {key: screen_row(work, key, real, Path(args.scorer), args.seed, args.threads) for key in ROWS}
    write_benchmark(path, {"benchmark": "DP-SGD from the private-by-default start (screening)", "machine": machine(),
                           "data": "ACDC (../shared/data/acdc), 64x64, seed-0 split; generators trained on the 50 train "
                                   "patients; images on the 196 real validation masks; segmenters scored on the 10 test patients",
                           "trained_by": TRAINED_BY, "segmenter_steps": SEGMENTER_STEPS, "rows": rows,
                           "table": table(rows), "finished": time.strftime("%Y-%m-%d %H:%M")})
    print(table(rows))


if __name__ == "__main__":
    main()

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
"""The report card of a pipeline run: one page a data-protection officer and a collaborator can both read.

Markdown, CSV, JSON and a self-contained HTML page (figures embedded as data URIs, no script): a plain-language
summary first, then the paper's comparison (each generator x fidelity, utility, privacy, sampling cost),
per-structure and per-phase Dice with intervals, the few-real curve, the attack table, the release gate, and the
hardware and budgets. A generator whose images fail the fidelity floor is called unusable and its privacy result
uninformative (``cmrsynth.pipeline.run.usability``): the summary never calls a generator private without saying
whether it is useful.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from cmrsynth.data.atomic import write_json_atomic

STRUCTURES = ("lv", "myo", "rv")
PHASES = ("ED", "ES")


def _dice(summary: dict, phase: str, s: str) -> dict:
    return summary.get(f"{phase}/dice_{s}", {"mean": float("nan"), "ci95": [float("nan")] * 2})


def _mean_dice(summary: dict) -> float:
    values = [_dice(summary, p, s)["mean"] for p in PHASES for s in STRUCTURES]
    return sum(values) / len(values)


def comparison_rows(facts: dict) -> list[dict]:
    """One row per generator: the paper's comparison (fidelity, utility, privacy, sampling cost)."""
    from cmrsynth.pipeline.run import usability

    rows = []
    for name in facts["request"]["generators"]:
        fid, audit, sampling = facts["fidelity"][name], facts["privacy"][name], facts["sampling"][name]
        syn = facts["utility"][f"{name}/synthetic"]["summary"]
        mixed = facts["utility"].get(f"{name}/real+synthetic", {}).get("summary")
        use = usability(fid)
        gate = facts["release"][name]["gate"]
        steps = sum(r.get("iteration", 0) for r in facts["training"][name].values())
        rows.append({
            "generator": name, "usable": use["usable"], "training_steps": steps,
            "training_seconds": sum(facts["seconds"].get(s) or 0 for s in facts["training"][name]),
            "sampler": sampling.get("sampler"), "nfe": sampling.get("nfe"), "seconds_per_slice": sampling.get("seconds_per_image"),
            **{f"faithfulness_{s}": fid["mask_faithfulness"][s] for s in STRUCTURES},
            "fd_seg_x100": 100 * fid["fd_seg"], "kid_seg_x1e4": 1e4 * fid["kid_seg"], "ssim": fid.get("paired", {}).get("ssim"),
            **{f"synthetic_dice_{s}_{p}": _dice(syn, p, s)["mean"] for p in PHASES for s in STRUCTURES},
            "synthetic_dice_mean": _mean_dice(syn), "real_synthetic_dice_mean": _mean_dice(mixed) if mixed else None,
            "attack": audit["strongest"], "attack_auc": audit["strongest_auc"], "attack_auc_ci95": audit["strongest_ci95"],
            "slice_attack_auc": audit.get("slice_auc"), "slice_tpr_at_1pct_fpr": audit.get("slice_tpr_1pct"),
            "reconstruction_auc": audit.get("reconstruction_auc"),
            "near_copies_pixel": audit.get("near_copies_pixel"), "near_copies_feature": audit.get("near_copies_feature"),
            "gate_removed": gate["removed"], "released": gate["kept"], "epsilon": None,
        })
    return rows


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def _mixed_words(row: dict) -> str:
    mixed = row["real_synthetic_dice_mean"]
    return "" if mixed is None else f"; with real data added, {mixed:.2f}"


def _privacy_words(row: dict) -> str:
    if not row["usable"]:
        return "its privacy result is uninformative (a generator that draws noise leaks nothing and is worth nothing)"
    auc = row["attack_auc"]
    lo = row["attack_auc_ci95"][0]
    if lo > 0.5:
        return (f"the strongest membership attack tells its training patients apart better than chance (AUC {auc:.2f}, "
                f"interval {lo:.2f}-{row['attack_auc_ci95'][1]:.2f}): do not share it without review")
    return (f"no membership attack separated its training patients from held-out ones beyond chance (strongest AUC "
            f"{auc:.2f}, interval {lo:.2f}-{row['attack_auc_ci95'][1]:.2f}; with this few patients the interval is wide)")


def sanity_line(sanity: dict) -> str:
    """What an untrained generator scores (the fidelity floor must separate it from a working one)."""
    from cmrsynth.pipeline.run import usability

    f = sanity["mask_faithfulness"]
    verdict = usability(sanity)
    return (f"Sanity: {sanity['generator']} with untrained weights scores mask faithfulness LV / MYO / RV "
            f"{_f(f['lv'])} / {_f(f['myo'])} / {_f(f['rv'])}, FD x100 {_f(100 * sanity['fd_seg'], 2)}: "
            f"{'usable (the floor failed to catch it!)' if verdict['usable'] else 'not usable, as it must be'} "
            f"(floor {0.5 * verdict['ceiling']:.2f}).")


def summary_lines(facts: dict, rows: list[dict]) -> list[str]:
    """The plain-language summary at the top of the report."""
    real = _mean_dice(facts["utility"]["real"]["summary"])
    prep = facts["prepare"]
    split = " / ".join(f"{k} {v}" for k, v in prep["patients_per_split"].items())
    lines = [f"From {prep['patients']} patients ({split}), the pipeline trained a mask generator and "
             f"{len(rows)} image generator(s), drew a synthetic dataset from each, and measured it. A segmenter trained on the "
             f"real training patients scores a mean Dice of {real:.2f} on the real test patients (1 is perfect)."]
    masks = facts["masks"]
    lines.append(f"The mask generator drew {masks.get('generated', '?')} masks, {masks.get('plausibility_rate', float('nan')):.0%} "
                 "anatomically plausible before clean-up.")
    for r in rows:
        use = ("usable: its images show the anatomy of their masks" if r["usable"] else
               "**not usable**: its images do not show the anatomy of their masks (below the fidelity floor)")
        lines.append(f"**{r['generator']}** is {use}. A segmenter trained on its synthetic images alone scores "
                     f"{r['synthetic_dice_mean']:.2f} on real test patients ({r['synthetic_dice_mean'] - real:+.2f} against real "
                     f"data){_mixed_words(r)}. Privacy: {_privacy_words(r)}. The "
                     f"release gate removed {r['gate_removed']} slice(s) (near copies) and released {r['released']}.")
    usable = [r for r in rows if r["usable"]]
    if usable:
        best = max(usable, key=lambda r: r["synthetic_dice_mean"])
        lines.append(f"Most useful usable generator here: **{best['generator']}**. No differential privacy was used, so no "
                     "formal guarantee is claimed; the audit is empirical.")
    else:
        lines.append("No generator passed the fidelity floor: nothing here should be shared as a useful synthetic dataset.")
    return lines


def markdown(facts: dict, rows: list[dict], machine: dict, images: dict[str, str] | None = None) -> str:
    """The report as markdown (``images`` maps figure names to links)."""
    images = images or {}
    real = "real slices (training patients)" in images
    note = ("This report shows real training slices beside the synthetic ones: share it only with those who may see the "
            "cohort, or rerun with `--no-real-slices`." if real else "No real patient image is shown in this report.")
    md = ["# cmr-synth report card", "", note, "", "## Summary", ""] + [f"- {line}" for line in summary_lines(facts, rows)] + [""]
    md += ["## Comparison (the paper's table)", "",
           "| | " + " | ".join(r["generator"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    table = [
        ("usable (fidelity floor)", lambda r: "yes" if r["usable"] else "**no**"),
        ("training steps, wall seconds", lambda r: f"{r['training_steps']}, {r['training_seconds']:.0f}"),
        ("sampler, NFE, s / slice", lambda r: f"{r['sampler']}, {r['nfe']}, {_f(r['seconds_per_slice'])}"),
        ("mask faithfulness Dice LV / MYO / RV", lambda r: " / ".join(_f(r[f"faithfulness_{s}"]) for s in STRUCTURES)),
        ("FD x100 / KID x10^4 (segmenter features)", lambda r: f"{_f(r['fd_seg_x100'], 2)} / {_f(r['kid_seg_x1e4'], 2)}"),
        ("SSIM to the real image of the same mask", lambda r: _f(r["ssim"])),
        ("synthetic-only Dice LV / MYO / RV, ED", lambda r: " / ".join(_f(r[f"synthetic_dice_{s}_ED"]) for s in STRUCTURES)),
        ("synthetic-only Dice LV / MYO / RV, ES", lambda r: " / ".join(_f(r[f"synthetic_dice_{s}_ES"]) for s in STRUCTURES)),
        ("real + synthetic, mean Dice", lambda r: _f(r["real_synthetic_dice_mean"])),
        ("strongest attack per patient, AUC [95 % CI]", lambda r: f"{r['attack']} {_f(r['attack_auc'], 2)} "
                                                                  f"[{_f(r['attack_auc_ci95'][0], 2)}, {_f(r['attack_auc_ci95'][1], 2)}]"),
        ("per slice: AUC, TPR at 1 % FPR", lambda r: f"{_f(r['slice_attack_auc'], 2)}, {_f(r['slice_tpr_at_1pct_fpr'], 3)}"),
        ("reconstruction attack AUC", lambda r: _f(r["reconstruction_auc"], 2)),
        ("near copies pixel / feature space", lambda r: f"{r['near_copies_pixel']} / {r['near_copies_feature']}"),
        ("release gate removed / released", lambda r: f"{r['gate_removed']} / {r['released']}"),
        ("DP epsilon", lambda r: "not used"),
    ]
    if all(r["real_synthetic_dice_mean"] is None for r in rows):  # the preset trained no real + synthetic segmenter
        table = [t for t in table if not t[0].startswith("real + synthetic")]
    md += [f"| {label} | " + " | ".join(cell(r) for r in rows) + " |" for label, cell in table] + [""]
    if "sanity" in facts:
        md += [sanity_line(facts["sanity"]), ""]
    md += ["## Utility: Dice per structure and phase on the real test patients (mean [95 % CI])", "",
           "| training set | " + " | ".join(f"{p} {s.upper()}" for p in PHASES for s in STRUCTURES) + " |",
           "|---|" + "---|" * 6]
    for mode, r in facts["utility"].items():
        cells = [_dice(r["summary"], p, s) for p in PHASES for s in STRUCTURES]
        md.append(f"| {mode} ({r['training_slices']} slices) | " +
                  " | ".join(f"{_f(c['mean'])} [{_f(c['ci95'][0], 2)}, {_f(c['ci95'][1], 2)}]" for c in cells) + " |")
    md += [""]
    if any(k.startswith("few") for k in facts["utility"]):
        md += ["Few-real curve: rows `fewK` (K real training patients alone) against `<generator>/fewK+synthetic`.", ""]
    md += ["## Privacy audit", "", "| audited | strongest per patient | AUC [95 % CI] | TPR at 1 % FPR | per-slice AUC | TPR at 1 % / 0.1 % FPR (slices) | reconstruction AUC |",
           "|---|---|---|---|---|---|---|"]
    for name, a in facts["privacy"].items():
        md.append(f"| {name} | {a['strongest']} | {_f(a['strongest_auc'], 2)} [{_f(a['strongest_ci95'][0], 2)}, {_f(a['strongest_ci95'][1], 2)}] | "
                  f"{_f(a['strongest_tpr_1pct'], 3)} | {_f(a.get('slice_auc'), 2)} | {_f(a.get('slice_tpr_1pct'), 3)} / "
                  f"{_f(a.get('slice_tpr_01pct'), 3)} | {_f(a.get('reconstruction_auc'), 2)} |")
    md += ["", "Attacks: white-box loss / PIA / SecMI / mid-band and their difficulty-calibrated versions, per patient and per "
           "slice; the strongest is picked after the fact (optimistic for the attacker). 0.5 is chance.", ""]
    md += ["## Figures", ""] + [f"![{k}]({v})" for k, v in images.items()] + [""]
    budgets = facts["request"]["preset"]
    md += ["## Hardware and budgets", "", f"- Machine: {json.dumps(machine)}",
           f"- Preset `{budgets['name']}`: {json.dumps(budgets)}",
           f"- Cohort: {facts['request']['cohort']}; seed {facts['request']['seed']}",
           "- Stage wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in facts["seconds"].items() if v is not None), ""]
    return "\n".join(md)


def tradeoff_figure(rows: list[dict], real_dice: float, png: Path) -> Path:
    """Utility (x) against the strongest attack (y), marker colour = mask faithfulness; the real-data line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    faith = [sum(r[f"faithfulness_{s}"] for s in STRUCTURES) / 3 for r in rows]
    sc = ax.scatter([r["synthetic_dice_mean"] for r in rows], [r["attack_auc"] for r in rows], c=faith, cmap="viridis",
                    vmin=0, vmax=1, s=90, edgecolors="k")
    for r in rows:
        ax.annotate(r["generator"] + ("" if r["usable"] else " (unusable)"), (r["synthetic_dice_mean"], r["attack_auc"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="attack at chance")
    ax.axvline(real_dice, color="tab:red", ls=":", lw=1, label="segmenter on real data")
    ax.set_xlabel("utility: synthetic-only segmenter, mean Dice on real test patients")
    ax.set_ylabel("privacy risk: strongest attack ROC AUC")
    ax.set_ylim(0.3, 1.02)
    fig.colorbar(sc, ax=ax, label="fidelity: mask faithfulness")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def write_csv(rows: list[dict], path: Path) -> None:
    """The comparison rows as CSV (one line per generator)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    for r in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    path.write_text(buf.getvalue())


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def to_html(md_text: str, figures: dict[str, Path]) -> str:
    """A self-contained page from the report's markdown (tables, lists, headings, bold) with figures embedded."""
    import re

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    body, table, in_list = [], [], False
    for line in md_text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                table.append(cells)
            continue
        if table:
            head, *rest = table
            body.append("<table><thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr></thead><tbody>" +
                        "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rest) + "</tbody></table>")
            table = []
        if line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{inline(line[2:])}</li>")
            continue
        if in_list:
            body.append("</ul>")
            in_list = False
        if line.startswith("!["):
            name = line[2:line.index("]")]
            if name in figures:
                body.append(f'<figure><img alt="{html.escape(name)}" src="{_data_uri(figures[name])}">'
                            f"<figcaption>{html.escape(name)}</figcaption></figure>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}table{border-collapse:collapse;"
             "margin:1em 0;font-size:0.9em}td,th{border:1px solid #bbb;padding:3px 7px}th{background:#eee}"
             "figure{display:inline-block;margin:0.5em;vertical-align:top}img{max-width:520px}")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>cmr-synth report card</title>"
            f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>")


def write_report(facts: dict, figures: dict[str, Path], out: Path, machine: dict) -> dict:
    """Write report.md / report.csv / report.json / report.html and the figures into ``out``.

    Args:
        facts: the pipeline's results (``Pipeline.run``).
        figures: "real" (the prepared folder: a preview is drawn; None leaves real slices out), "masks" and one sample
            grid per generator (PNG).
        out: the report folder.
        machine: hardware facts.
    """
    import shutil

    from cmrsynth.report import datalist_preview

    out.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(facts)
    real_dice = _mean_dice(facts["utility"]["real"]["summary"])
    pngs = {"trade-off: utility, privacy, fidelity": tradeoff_figure(rows, real_dice, out / "tradeoff.png")}
    if figures.get("real") is not None:
        pngs["real slices (training patients)"] = datalist_preview(figures["real"], out / "real_slices.png")
    for key, png in figures.items():
        if key != "real" and png is not None and Path(png).is_file():
            name = "synthetic masks" if key == "masks" else f"{key} samples"
            pngs[name] = Path(shutil.copyfile(png, out / f"{key}.png"))
    text = markdown(facts, rows, machine, {k: v.name for k, v in pngs.items()})
    (out / "report.md").write_text(text)
    write_csv(rows, out / "report.csv")
    write_json_atomic(out / "report.json", {"comparison": rows, "facts": facts, "machine": machine})
    (out / "report.html").write_text(to_html(text, pngs))
    return {"generators": len(rows), "usable": sum(r["usable"] for r in rows)}

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
"""cmrsynth.pipeline.card: the report card (markdown, CSV, JSON, self-contained HTML) and its fidelity floor."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cmrsynth.pipeline.card import comparison_rows, summary_lines, write_report
from cmrsynth.pipeline.run import usability
from tests import browser

# facts written by a real run of the smoke preset as it was before 2026-12-08 (4 training steps from scratch: every
# generator below the fidelity floor; the preset now starts from the shipped phantom weights), from
# before the pipeline had its sanity row (added by hand as a copy of ddpm_cmr's fidelity: 4 steps is nearly untrained)
SMOKE = json.loads((Path(__file__).parent / "data" / "smoke_facts.json").read_text())


def _usable(facts: dict, name: str) -> dict:
    """The same facts with one generator's images made as faithful as real images."""
    facts = copy.deepcopy(facts)
    fid = facts["fidelity"][name]
    fid["mask_faithfulness"] = dict(fid["real_dice"])
    return facts


def test_the_fidelity_floor_is_half_the_real_images_faithfulness():
    real = {"lv": 0.9, "myo": 0.8, "rv": 0.7}
    assert usability({"mask_faithfulness": {"lv": 0.5, "myo": 0.45, "rv": 0.35}, "real_dice": real})["usable"]
    verdict = usability({"mask_faithfulness": {"lv": 0.3, "myo": 0.4, "rv": 0.4}, "real_dice": real})
    assert not verdict["usable"] and "uninformative" in verdict["note"]


def test_an_unusable_generator_is_never_called_private():
    lines = " ".join(summary_lines(SMOKE, comparison_rows(SMOKE)))
    assert lines.count("**not usable**") == 3 and "privacy result is uninformative" in lines
    assert "No generator passed the fidelity floor" in lines and "beyond chance" not in lines


def test_a_usable_generator_gets_a_privacy_verdict_and_is_named_most_useful():
    facts = _usable(SMOKE, "fm_cmr")
    rows = {r["generator"]: r for r in comparison_rows(facts)}
    assert rows["fm_cmr"]["usable"] and not rows["ddpm_cmr"]["usable"]
    text = " ".join(summary_lines(facts, list(rows.values())))
    assert "**fm_cmr** is usable" in text and "Most useful usable generator here: **fm_cmr**" in text
    assert "better than chance" in text or "beyond chance" in text


def _figures(tmp_path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmrsynth.data.nifti import save_slice

    prepared = tmp_path / "prepared"
    entries = []
    for i in range(3):
        for folder, array, dtype in (("images", np.random.rand(16, 16), np.float32), ("labels", np.full((16, 16), i), np.uint8)):
            (prepared / folder).mkdir(parents=True, exist_ok=True)
            save_slice(prepared / folder / f"s{i}.nii.gz", array, (2.5, 2.5, 1.0), dtype)
        entries.append({"image": f"images/s{i}.nii.gz", "label": f"labels/s{i}.nii.gz"})
    (prepared / "datalist.json").write_text(json.dumps({"training": entries}))
    figures = {"real": prepared}
    for key in ("masks", "ddpm_cmr", "fm_cmr", "ldm_cmr"):
        plt.imsave(tmp_path / f"{key}_grid.png", np.random.rand(8, 8))
        figures[key] = tmp_path / f"{key}_grid.png"
    return figures


def test_report_files_hold_the_table_and_embed_every_figure(tmp_path):
    out = tmp_path / "report"
    result = write_report(SMOKE, _figures(tmp_path), out, {"cpu_threads": 2})
    assert result == {"generators": 3, "usable": 0}
    md = (out / "report.md").read_text()
    assert md.startswith("# cmr-synth report card\n\nThis report shows real training slices") and "## Summary" in md
    assert "| mask faithfulness Dice LV / MYO / RV |" in md and "Sanity: ddpm_cmr with untrained weights" in md
    assert "not usable, as it must be" in md
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["generator"] for r in rows] == ["ddpm_cmr", "fm_cmr", "ldm_cmr"]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6 and "src=\"file:" not in page and "<script" not in page
    assert json.loads((out / "report.json").read_text())["comparison"][0]["generator"] == "ddpm_cmr"


def test_real_slices_can_be_left_out_of_the_report(tmp_path):
    figures = {**_figures(tmp_path), "real": None}
    write_report(SMOKE, figures, tmp_path / "report", {"cpu_threads": 2})
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "No real patient image is shown" in page
    assert not (tmp_path / "report" / "real_slices.png").exists()


@pytest.mark.skipif(browser.CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install.sh installs it as root)")
def test_report_renders_in_headless_chromium(tmp_path):
    out = tmp_path / "report"
    write_report(SMOKE, _figures(tmp_path), out, {"cpu_threads": 2})
    seen = browser.render(out / "report.html", tmp_path)
    assert seen["images"] == 6 and seen["broken"] == [] and seen["errors"] == []
    assert seen["tables"] >= 3 and seen["rows"] > 20


@pytest.mark.skipif(browser.CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_browser_check_catches_a_broken_image(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head></head><body><table><tr><td>x</td></tr></table>"
                    "<img alt='gone' src='data:image/png;base64,AAAA'></body></html>")
    seen = browser.render(page, tmp_path)
    assert seen["broken"] == ["gone"] and seen["tables"] == 1

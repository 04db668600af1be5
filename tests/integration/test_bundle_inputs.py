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
"""Bundles fail like the CLIs: bad input ends a ``monai.bundle run`` with one line naming the file and the problem,
exit status 2, no traceback, and nothing created in the bundle root."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from cmrsynth.bundle_run import override_args
from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.prepare import PrepareConfig, prepare_cohort
from tests.conftest import REPO
from tests.integration.warm_bundle import WarmBundleLauncher

pytestmark = pytest.mark.integration
B = REPO / "bundles"
TRAIN = ["common.yaml", "train.yaml"]
TINY = {"image_size": 32, "channels": [8, 16], "attention_levels": [False, True], "num_head_channels": 8}


@pytest.fixture(scope="module")
def prepared(phantom_cohort_master, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "p32"
    prepare_cohort(read_acdc(phantom_cohort_master), out, PrepareConfig(size=32, fractions=(0.6, 0.2, 0.2)))
    return out


def _damaged(prepared, tmp_path, edit) -> str:
    """A copy of the prepared set whose datalist ``edit`` changes; returns the datalist path."""
    copy = shutil.copytree(prepared, tmp_path / "data")
    data = json.loads((copy / "datalist.json").read_text())
    (copy / "datalist.json").write_text(json.dumps(edit(data, copy)))
    return str(copy / "datalist.json")


def _missing_image(data, copy):
    (copy / data["training"][1]["image"]).unlink()
    return data


def _null_image(data, _):
    data["validation"][0]["image"] = None
    return data


CASES = {
    "ddpm_cmr: a listed image is missing": (
        "ddpm_cmr", TRAIN, lambda p, t: {"dataset_dir": str(t / "data"), "_": _damaged(p, t, _missing_image), **TINY},
        r"data/images/\S+\.nii\.gz: image listed in \S+datalist\.json \(training\[1\]\) not found"),
    "seg_utility: the datalist is a top-level list": (
        "seg_utility", TRAIN, lambda p, t: {"real_datalist": _damaged(p, t, lambda d, _: d["training"])},
        r"datalist\.json: top level is a list"),
    "ldm_cmr autoencoder: an entry with a null image": (
        "ldm_cmr", ["common.yaml", "train_autoencoder.yaml"], lambda p, t: {"dataset_dir": str(t / "data"), "_": _damaged(p, t, _null_image), **TINY},
        r"datalist\.json: validation\[0\] has image = None; expected a file path"),
    "privacy_audit: no real datalist": (
        "privacy_audit", ["audit.yaml"], lambda p, t: {"real_datalist": str(t / "nowhere" / "datalist.json"), "generator_root": str(t)},
        r"nowhere/datalist\.json: datalist JSON not found"),
    "fm_cmr inference: masks of another size": (
        "fm_cmr", ["common.yaml", "inference.yaml"], lambda p, t: {**TINY, "image_size": 48, "mask_datalist": str(p / "datalist.json"),
                                                                   "mask_key": "test"},
        r"labels/\S+\.nii\.gz: label has shape \(32, 32\); expected \(48, 48\)"),
    "mask_generator inference: no trained checkpoint": (
        "mask_generator", ["common.yaml", "inference.yaml"], lambda p, t: {**TINY},
        r"models/best_ema\.pt: trained mask generator not found: run configs/train\.yaml first"),
    "seg_utility inference: a listed image is missing": (
        "seg_utility", ["common.yaml", "inference.yaml"],
        lambda p, t: {"datalist": _damaged(p, t, lambda d, c: (c / d["test"][0]["image"]).unlink() or d), "ckpt_path": str(t / "model.pt")},
        r"data/images/\S+\.nii\.gz: image listed in \S+datalist\.json \(test\[0\]\) not found"),
    "privacy_audit release: the synthetic datalist has no training section": (
        "privacy_audit", ["release.yaml"], lambda p, t: {"real_datalist": str(p / "datalist.json"),
                                                         "synthetic_datalist": _damaged(p, t, lambda d, _: {"test": d["test"]})},
        r"datalist\.json: section 'training' is missing"),
    "ddpm_cmr: checkpoints would go into the dataset": (
        "ddpm_cmr", TRAIN, lambda p, t: {"dataset_dir": str(t / "root" / "models"), "_": str(shutil.copytree(p, t / "root" / "models")), **TINY},
        r"root/models: output is the input"),
}


@pytest.fixture(scope="module")
def launcher():
    warm = WarmBundleLauncher()
    yield warm
    warm.close()


def _assert_refused(code, log, root, problem, created_before=()):
    text = log.read_text()
    last = text.strip().splitlines()[-1]
    assert code == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert last.startswith("error: ") and re.search(problem, last), last
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []
    assert [p for p in left if not p.startswith(created_before)] == [], f"the refused run created {left}"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_ends_a_bundle_run_with_one_line_and_no_files(launcher, prepared, tmp_path, case):
    bundle, configs, overrides, problem = CASES[case]
    overrides = {k: v for k, v in overrides(prepared, tmp_path).items() if k != "_"}
    root, log = tmp_path / "root", tmp_path / "run.log"
    created = ("models",) if "into the dataset" in case else ()  # that case's input is the folder itself
    code = launcher.wait(launcher.start(B / bundle, configs, root, overrides, log), timeout=120)
    _assert_refused(code, log, root, problem, created)


def test_the_real_command_refuses_a_missing_dataset_dir(tmp_path):
    """A cold ``python -m monai.bundle run``: exactly what a user types."""
    root = tmp_path / "root"
    files = json.dumps([str(B / "mask_generator" / "configs" / c) for c in TRAIN])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(root), "--config_file", files,
           *override_args({"dataset_dir": str(tmp_path / "missing")})]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    (tmp_path / "run.log").write_text(proc.stdout + proc.stderr)
    _assert_refused(proc.returncode, tmp_path / "run.log", root, r"missing/datalist\.json: datalist JSON not found")

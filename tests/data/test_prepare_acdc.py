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
"""Preparation on real ACDC (skipped when ../shared/data/acdc is absent)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.nifti import load_volume
from cmrsynth.data.prepare import PrepareConfig, prepare_cohort

pytestmark = pytest.mark.real_data
#: Two patients per group keeps the test under a minute; scripts/prepare_data.py covers all 70.
SUBSET = ("patient001", "patient002", "patient021", "patient022", "patient041", "patient042",
          "patient061", "patient062", "patient081", "patient082")


@pytest.fixture(scope="module")
def prepared128(acdc_root, tmp_path_factory):
    records = [r for r in read_acdc(acdc_root) if r.patient_id in SUBSET]
    out = tmp_path_factory.mktemp("acdc") / "p128"
    summary = prepare_cohort(records, out, PrepareConfig(size=128, fractions=(0.6, 0.2, 0.2)))
    return records, out, summary


def test_slice_count_equals_labelled_slices(prepared128):
    records, _, summary = prepared128
    for r in records:
        expected = sum(int((load_volume(f.label)[0] > 0).any(axis=(0, 1)).sum()) for f in r.frames.values())
        assert summary["slices_per_patient"][r.patient_id] == expected
    assert summary["max_foreground_lost_by_crop"] == 0.0


def test_round_trip_keeps_label_geometry(prepared128):
    """Per-slice structure areas (mm^2) after resampling and crop agree with the originals within 5 %."""
    records, out, _ = prepared128
    by_id = {r.patient_id: r for r in records}
    d = json.loads((out / "datalist.json").read_text())
    errors, volumes = [], {}
    for e in d["training"] + d["validation"] + d["test"]:
        original, spacing = load_volume(by_id[e["patient"]].frames[e["phase"]].label)
        prepared = np.asanyarray(nib.load(out / e["label"]).dataobj)
        for k in (1, 2, 3):
            a0 = (original[:, :, e["slice"]] == k).sum() * spacing[0] * spacing[1]
            a1 = (prepared == k).sum() * e["spacing"][0] * e["spacing"][1]
            key = (e["patient"], e["phase"], k)
            v0, v1 = volumes.get(key, (0.0, 0.0))
            volumes[key] = (v0 + a0, v1 + a1)
            if a0 >= 200:  # structures of at least 200 mm^2 (128 pixels at 1.25 mm)
                errors.append(abs(a1 - a0) / a0)
    errors = np.array(errors)
    assert len(errors) > 200
    assert np.median(errors) < 0.02
    assert (errors <= 0.05).mean() >= 0.98, f"{(errors > 0.05).sum()} of {len(errors)} slices off by more than 5 %"
    # whole structures (summed over the volume) within 5 % without exception
    rel = [abs(v1 - v0) / v0 for v0, v1 in volumes.values() if v0 > 0]
    assert max(rel) < 0.05


def test_prepared_acdc_intensities_and_split(prepared128):
    _, out, summary = prepared128
    d = json.loads((out / "datalist.json").read_text())
    assert summary["patients_per_split"] == {"train": 6, "val": 2, "test": 2}
    e = d["test"][0]
    x = nib.load(out / e["image"]).get_fdata()
    assert x.shape == (128, 128) and -1 <= x.min() < 0 < x.max() <= 1

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
"""Shared fixtures: a small phantom cohort (the tests' embedded data) and the real data folders when present."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cmrsynth.data.phantom import write_phantom_cohort

REPO = Path(__file__).resolve().parents[1]


def heart_mask(n: int = 48, lv: float = 8, wall: float = 4, rv: bool = True, rv_gap: float = 4, rv_radius: float = 6) -> np.ndarray:
    """A (n, n) canonical short-axis mask: an LV disc of radius ``lv`` in a myocardial ring ``wall`` thick, and an
    RV disc to its left."""
    x, y = np.mgrid[:n, :n] - n / 2
    r = np.hypot(x, y)
    m = np.zeros((n, n), np.uint8)
    m[r < lv + wall] = 2
    m[r < lv] = 3
    if rv:
        m[(np.hypot(x + lv + wall + rv_gap, y) < rv_radius) & (m == 0)] = 1
    return m
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def phantom_cohort_master(tmp_path_factory) -> Path:
    """A read-only phantom cohort in the ACDC layout: one patient per group (5 patients)."""
    root = tmp_path_factory.mktemp("phantom") / "cohort"
    write_phantom_cohort(root, n_per_group=1, seed=123)
    return root


@pytest.fixture
def phantom_cohort(phantom_cohort_master, tmp_path) -> Path:
    """A private copy of the phantom cohort that a test may damage."""
    return Path(shutil.copytree(phantom_cohort_master, tmp_path / "cohort"))


@pytest.fixture(scope="session")
def acdc_root() -> Path:
    """The real ACDC subset in ../shared/data/acdc; the test is skipped when it is absent."""
    root = SHARED_DATA / "acdc"
    if not root.is_dir():
        pytest.skip("real ACDC data not present (../shared/data/acdc)")
    return root


@pytest.fixture(scope="session")
def mnms2_root() -> Path:
    """The M&Ms-2 sample in ../shared/data/mnms2_sample; skipped when absent."""
    root = SHARED_DATA / "mnms2_sample"
    if not root.is_dir():
        pytest.skip("M&Ms-2 sample not present (../shared/data/mnms2_sample)")
    return root

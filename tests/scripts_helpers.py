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
"""Helpers for the tests of scripts/: importing a script, and audit results shaped as privacy_audit writes them."""

from __future__ import annotations

import functools
import importlib
import sys

from tests.conftest import REPO


@functools.cache  # the scripts import each other by name, as when run from scripts/
def script(name: str):
    """A module of scripts/, imported once."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "scripts"))


def attack(auc: float, tpr: float = 0.0) -> dict:
    """One attack's entry of a membership table."""
    return {"auc": {"value": auc, "ci95": [auc - 0.1, auc + 0.1]}, "tpr_at_1pct_fpr": {"value": tpr},
            "tpr_at_0.1pct_fpr": {"value": tpr}}


def audit(slice_auc: float, black_box: float = 0.55, tpr: float = 0.02, test_auc: float = 0.5) -> dict:
    """An audit.json whose strongest slice-level attack (all non-members) is the calibrated loss at ``slice_auc``."""
    return {"membership": {"loss_t50": attack(0.7), "loss_t50_cal": attack(0.66)},
            "membership_slices": {"loss_t50": attack(0.55, tpr), "loss_t50_cal": attack(slice_auc, tpr / 2)},
            "test_non_members_only": {"membership_slices": {"loss_t500": attack(test_auc, 0.2)}},
            "reconstruction": {"membership": {"ssim": attack(black_box), "neg_rms": attack(0.5)}}}

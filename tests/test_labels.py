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
from __future__ import annotations

import numpy as np
import pytest

from cmrsynth.labels import CHANNEL_DEF, LABELS, one_hot, to_canonical, unknown_label_values


def test_schema_is_acdc_convention():
    assert LABELS == {0: "background", 1: "rv", 2: "myo", 3: "lv"}
    assert CHANNEL_DEF["3"] == "LV cavity" and CHANNEL_DEF["1"] == "RV cavity"


def test_mnms_converts_lv_and_rv_swapped():
    mnms = np.array([[0, 1], [2, 3]])
    assert to_canonical(mnms, "mnms").tolist() == [[0, 3], [2, 1]]
    assert to_canonical(mnms, "acdc").tolist() == [[0, 1], [2, 3]]


def test_unknown_values_and_convention_are_refused():
    assert unknown_label_values(np.array([0, 1, 4, 2.5])) == [2.5, 4]  # reported as they are, not rounded
    with pytest.raises(ValueError, match=r"\[4\]"):
        to_canonical(np.array([0, 4]), "acdc")
    with pytest.raises(ValueError, match="allowed"):
        to_canonical(np.array([0, 1]), "kaggle")


def test_one_hot_round_trips():
    label = np.random.default_rng(0).integers(0, 4, size=(5, 7))
    oh = one_hot(label)
    assert oh.shape == (4, 5, 7) and oh.sum(0).min() == 1
    np.testing.assert_array_equal(oh.argmax(0), label)

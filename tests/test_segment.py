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

import json
from collections import Counter

import pytest

from cmrsynth.errors import CMRDataError
from cmrsynth.segment import compose_training_set, headline


def _datalist(tmp_path, name, patients, groups="AB", per_patient=3, key="training"):
    entries = [{"image": f"img/{g}{p}_{s}.nii.gz", "label": f"lab/{g}{p}_{s}.nii.gz", "patient": f"{g}{p}", "group": g}
               for g in groups for p in range(patients) for s in range(per_patient)]
    path = tmp_path / name / "datalist.json"
    path.parent.mkdir()
    path.write_text(json.dumps({key: entries}))
    return path


def test_real_only_resolves_paths(tmp_path):
    real = _datalist(tmp_path, "real", 2)
    items = compose_training_set([{"datalist": real}])
    assert len(items) == 12 and items[0]["image"].startswith(str(tmp_path / "real"))


def test_few_real_balances_groups_and_ratio_sets_the_synthetic_share(tmp_path):
    real = _datalist(tmp_path, "real", 5)
    syn = _datalist(tmp_path, "syn", 2, groups="S", per_patient=4)
    items = compose_training_set([{"datalist": real, "patients": 4}, {"datalist": syn, "ratio": 2.0}], seed=1)
    real_items = [i for i in items if i["source"] == 0]
    assert len({i["patient"] for i in real_items}) == 4
    assert Counter(i["group"] for i in real_items) == {"A": 6, "B": 6}
    assert sum(i["source"] == 1 for i in items) == 24  # 2 x 12 real slices, drawn with replacement from 8
    assert compose_training_set([{"datalist": real, "patients": 4}], seed=1) == [
        {k: v for k, v in i.items()} for i in real_items
    ]


def test_composition_errors(tmp_path):
    real = _datalist(tmp_path, "real", 1)
    with pytest.raises(CMRDataError, match="10 patients requested but the datalist has 2"):
        compose_training_set([{"datalist": real, "patients": 10}])
    with pytest.raises(CMRDataError, match="no 'test' list"):
        compose_training_set([{"datalist": real, "key": "test"}])
    with pytest.raises(ValueError, match="no training sources"):
        compose_training_set([])


def test_headline_keeps_dice_means():
    assert headline({"ED/dice_lv": {"mean": 0.912345}, "ED/hd95_lv": {"mean": 3.0}}) == {"ED/dice_lv": 0.9123}


def test_evaluation_entries_drop_null_fields_and_name_an_empty_section(tmp_path):
    import json

    from cmrsynth.segment import evaluation_entries

    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"test": [{"image": "i.nii.gz", "label": "l.nii.gz", "group": None, "patient": "p"}], "validation": []}))
    (entry,) = evaluation_entries(path, "test")
    assert "group" not in entry and entry["image"] == str(tmp_path / "i.nii.gz") and entry["patient"] == "p"
    with pytest.raises(CMRDataError, match="section 'validation' is empty"):
        evaluation_entries(path, "validation")
    with pytest.raises(CMRDataError, match="no 'training' section"):
        evaluation_entries(path, "training")

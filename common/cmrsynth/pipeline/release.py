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
"""The release: a gate-passed synthetic set as a MONAI datalist and as an nnU-Net v2 raw dataset, with a data card.

Nothing identifying goes in: entries are rewritten from a short list of allowed fields (no provenance, no source
paths), files are copied from the synthetic set (written by cmr-synth with no source header fields), and the data
card counts the source cohort by group only. The folder is built beside its target and moved into place at the end,
so a crash leaves no half-written release.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cmrsynth.data.atomic import atomic_directory, write_json_atomic
from cmrsynth.errors import CMRDataError
from cmrsynth.labels import CHANNEL_DEF

#: the datalist fields a released entry may carry
RELEASED_FIELDS = ("synthetic_id", "group", "phase", "spacing")


def nnunet_dataset_json(n_training: int, name: str) -> dict:
    """nnU-Net v2's dataset.json for single-channel MR slices in the product's label schema."""
    return {"name": name, "channel_names": {"0": "MRI"},
            "labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3},
            "numTraining": n_training, "file_ending": ".nii.gz",
            "description": "cmr-synth synthetic short-axis slices (labels: ACDC convention)"}


def _released_entries(datalist: Path) -> list[dict]:
    data = json.loads(datalist.read_text())
    entries = data.get("training", [])
    if not entries:
        raise CMRDataError(datalist, "the release gate kept no synthetic slice: nothing to release")
    return entries


def export_release(released_datalist: Path, out: Path, card: dict, dataset_id: int = 501, overwrite: bool = True) -> dict:
    """Write ``out`` = ``datalist.json`` + ``images/`` + ``labels/`` (MONAI), ``nnUNet_raw/Dataset<id>_CMRSynth/``
    (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``dataset.json``), ``data_card.md`` / ``.json``.

    Args:
        released_datalist: the release gate's filtered datalist (paths relative to its folder).
        out: the release folder (replaced when it is one cmr-synth wrote).
        card: the data card's facts (source cohort by group, generator, weights hash, training, audit, epsilon, intended use).
        dataset_id: nnU-Net dataset number.

    Returns:
        counts of what was released.
    """
    entries = _released_entries(released_datalist)
    root = released_datalist.parent
    name = f"Dataset{dataset_id:03d}_CMRSynth"
    with atomic_directory(out, overwrite=overwrite) as tmp:
        nnunet = tmp / "nnUNet_raw" / name
        for folder in (tmp / "images", tmp / "labels", nnunet / "imagesTr", nnunet / "labelsTr"):
            folder.mkdir(parents=True)
        released = []
        for i, e in enumerate(entries):
            case = f"cmrsynth_{i:05d}"
            shutil.copyfile(root / e["image"], tmp / "images" / f"{case}.nii.gz")
            shutil.copyfile(root / e["label"], tmp / "labels" / f"{case}.nii.gz")
            shutil.copyfile(root / e["image"], nnunet / "imagesTr" / f"{case}_0000.nii.gz")
            shutil.copyfile(root / e["label"], nnunet / "labelsTr" / f"{case}.nii.gz")
            released.append({"image": f"images/{case}.nii.gz", "label": f"labels/{case}.nii.gz",
                             **{k: e[k] for k in RELEASED_FIELDS if k in e}})
        write_json_atomic(tmp / "datalist.json", {"labels": CHANNEL_DEF, "training": released})
        write_json_atomic(nnunet / "dataset.json", nnunet_dataset_json(len(released), name))
        card = {**card, "released_slices": len(released), "formats": ["MONAI datalist (datalist.json)", f"nnU-Net v2 raw ({name})"]}
        write_json_atomic(tmp / "data_card.json", card)
        (tmp / "data_card.md").write_text(data_card_markdown(card))
    return {"slices": len(released), "nnunet_dataset": name}


def data_card_markdown(card: dict) -> str:
    """The data card as a page a data-protection officer can read."""
    audit = card.get("audit", {})
    lines = [f"# Data card: synthetic cardiac MRI from {card['generator']}", "",
             f"**Intended use**: {card['intended_use']}", "",
             f"- Released slices: {card['released_slices']} ({card['image_size']}x{card['image_size']}, labels 0 background, 1 RV cavity, "
             "2 myocardium, 3 LV cavity), in " + " and ".join(card["formats"]),
             f"- Generator: {card['generator']} (bundle version {card.get('bundle_version', '?')}), weights sha256 "
             f"`{card['weights_sha256']}`, sampler {card.get('sampler', '?')}",
             f"- Source cohort it learned from: {card['source_training_patients']} patients by group "
             f"{json.dumps(card['source_groups'], sort_keys=True)} (counts only; no identifier is in this release)",
             f"- Training: {card.get('training', '?')}",
             f"- Differential privacy: {card.get('epsilon') or 'not used (no formal guarantee)'}",
             f"- Release gate: {card['gate']['removed']} of {card['gate']['candidates']} slices removed (near copies of "
             "training images or masks, or drawn from a training patient's own mask)",
             f"- Privacy audit: strongest membership attack ROC AUC {audit.get('strongest_auc', float('nan')):.2f} "
             f"({audit.get('strongest', '?')}; 0.5 is chance), reconstruction attack AUC "
             f"{audit.get('reconstruction_auc', float('nan')):.2f}",
             f"- Usable: {card.get('usable_note', '')}", ""]
    return "\n".join(lines)

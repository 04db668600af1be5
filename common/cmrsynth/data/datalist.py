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
"""A user's own cohort as a MONAI datalist JSON, and the datalists that stages hand to each other."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from cmrsynth.data.records import Cohort, Frame, PatientRecord
from cmrsynth.errors import CMRDataError
from cmrsynth.labels import LabelConvention

#: Datalist sections of the product (MONAI's ``load_decathlon_datalist`` reads each by key).
SECTIONS = ("training", "validation", "test")


def load_json(path: str | Path) -> dict:
    """Load a JSON file, turning a missing file or a syntax error into a CMRDataError."""
    path = Path(path)
    if not path.is_file():
        raise CMRDataError(path, "datalist JSON not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CMRDataError(path, f"invalid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CMRDataError(path, f"cannot read the file ({type(exc).__name__}: {exc})") from None


def load_section(datalist: str | Path, section: str) -> list[dict]:
    """Entries of one datalist section with their arrays: labels under ``"mask"``, images under ``"array"``.

    ``datalist`` is the JSON file or the folder holding ``datalist.json``; paths resolve against its folder.

    Raises:
        CMRDataError: a missing file or section, or an unreadable NIfTI.
    """
    from cmrsynth.data.nifti import load_array

    path = Path(datalist)
    path = path / "datalist.json" if path.is_dir() else path
    data = load_json(path)
    if section not in data:
        raise CMRDataError(path, f"no {section!r} section; sections are {sorted(data)}")
    entries = [dict(e) for e in data[section]]
    for e in entries:
        if "label" in e:
            e["mask"] = load_array(path.parent / e["label"])
        if "image" in e:
            e["array"] = load_array(path.parent / e["image"])
    return entries


def read_datalist_cohort(
    path: str | Path, key: str = "training", label_convention: str = "acdc"
) -> list[PatientRecord]:
    """Read a user's cohort from a MONAI datalist of 3D image/label pairs.

    Each entry is ``{"image": ..., "label": ..., "patient": ..., "group": ..., "phase": "ED"|"ES"}``;
    only ``image`` is required. Relative paths are resolved against the JSON's folder. Without
    ``patient`` each entry is its own patient; without ``phase`` entries of a patient are ED, then ES.

    Raises:
        CMRDataError: missing key, an entry without ``image``, a missing file, a repeated phase.
    """
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise CMRDataError(path, f"top level is a {type(data).__name__}; expected an object like {{{key!r}: [...]}}")
    if key not in data or not isinstance(data[key], list):
        raise CMRDataError(path, f"no list under key {key!r}; keys are {sorted(data)}")
    if not data[key]:
        raise CMRDataError(path, f"list {key!r} is empty: no patients")
    convention = LabelConvention(label_convention)
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for n, entry in enumerate(data[key]):
        if not isinstance(entry, dict) or "image" not in entry:
            raise CMRDataError(path, f"entry {n} of {key!r} has no 'image'")
        for role in ("image", "label"):
            if role in entry and entry[role] is not None and not (isinstance(entry[role], str) and entry[role]):
                raise CMRDataError(path, f"entry {n} of {key!r} has {role} = {entry[role]!r}; expected a file path")
        if entry["image"] is None:
            raise CMRDataError(path, f"entry {n} of {key!r} has image = None; expected a file path")
        image = (path.parent / entry["image"]).resolve()
        pid = str(entry.get("patient", image.name.split(".")[0]))
        by_patient[pid].append({**entry, "image": image})
    records = Cohort(root=path)
    for pid, entries in by_patient.items():
        frames = {}
        for n, entry in enumerate(entries):
            phase = entry.get("phase", ("ED", "ES")[n] if n < 2 else f"frame{n}")
            if phase in frames:
                raise CMRDataError(path, f"patient {pid!r} has phase {phase!r} twice")
            for role in ("image", "label"):
                if entry.get(role) is not None:
                    f = (path.parent / entry[role]).resolve()
                    if not f.is_file():
                        raise CMRDataError(f, f"{role} listed in {path.name} not found")
            label = entry.get("label")
            frames[phase] = Frame(
                image=entry["image"],
                label=(path.parent / label).resolve() if label else None,
                label_convention=convention,
            )
        records.append(PatientRecord(patient_id=pid, group=entries[0].get("group"), frames=frames, source="datalist"))
    return records

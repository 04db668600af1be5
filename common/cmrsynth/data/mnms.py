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
"""Readers for the M&Ms (2020) and M&Ms-2 layouts. Both label 1 LV, 2 MYO, 3 RV: converted at load time.

- M&Ms 2020: ``<id>/<id>_sa.nii.gz`` (4D cine) and ``<id>/<id>_sa_gt.nii.gz``, with ED/ES frame indices,
  vendor, centre and pathology in the challenge's information CSV.
- M&Ms-2: per-phase files ``<id>_SA_ED.nii.gz``, ``<id>_SA_ED_gt.nii.gz`` (and ES), in ``<id>/`` folders or
  flat in the cohort folder; the information CSV is optional.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from cmrsynth.data.records import Cohort, Frame, PatientRecord, list_subfolders
from cmrsynth.errors import CMRDataError
from cmrsynth.labels import LabelConvention

#: Column aliases in the challenges' information CSVs (compared lower-case without spaces or underscores).
_COLUMNS = {
    "patient_id": ("externalcode", "subjectcode", "subject", "id", "patient"),
    "group": ("pathology", "disease", "group"),
    "vendor": ("vendorname", "vendor"),
    "centre": ("centre", "center"),
    "ed": ("ed",),
    "es": ("es",),
    "height": ("height",),
    "weight": ("weight",),
}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def read_info_csv(path: str | Path) -> dict[str, dict[str, str]]:
    """Read a challenge information CSV into ``{patient_id: {field: value}}`` using known column aliases.

    Raises:
        CMRDataError: missing file or no recognisable patient id column.
    """
    path = Path(path)
    if not path.is_file():
        raise CMRDataError(path, "information CSV not found")
    with path.open(newline="", errors="replace") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise CMRDataError(path, "information CSV has no rows")
    header = {_norm(c): c for c in rows[0]}
    columns = {}
    for field, aliases in _COLUMNS.items():
        # the first alias found wins, so VendorName is preferred over the one-letter Vendor code
        for alias in aliases:
            if alias in header:
                columns[field] = header[alias]
                break
    if "patient_id" not in columns:
        raise CMRDataError(path, f"no patient id column (looked for {_COLUMNS['patient_id']}); has {list(rows[0])}")
    table = {}
    for row in rows:
        pid = row[columns["patient_id"]].strip()
        table[pid] = {field: row[col].strip() for field, col in columns.items() if row.get(col) is not None}
    return table


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _record(pid: str, frames: dict[str, Frame], info: dict[str, str], source: str) -> PatientRecord:
    return PatientRecord(
        patient_id=pid,
        group=info.get("group") or None,
        frames=frames,
        height=_float(info.get("height")),
        weight=_float(info.get("weight")),
        vendor=info.get("vendor") or None,
        centre=info.get("centre") or None,
        source=source,
    )


def read_mnms(root: str | Path, info_csv: str | Path) -> list[PatientRecord]:
    """Read the M&Ms 2020 layout: 4D ``<id>_sa.nii.gz`` cines with ED/ES indices from the information CSV.

    Patients without an ``_sa_gt`` file are returned unlabelled.

    Raises:
        CMRDataError: missing folder, no patients, a patient missing from the CSV or without ED/ES indices.
    """
    root = Path(root)
    if not root.is_dir():
        raise CMRDataError(root, "cohort folder not found")
    info = read_info_csv(info_csv)
    records = Cohort(root=root)
    folders, records.skipped = list_subfolders(root)
    for image in sorted(f for folder in folders for f in folder.glob("*_sa.nii.gz")):
        pid = image.name[: -len("_sa.nii.gz")]
        if pid not in info:
            raise CMRDataError(image, f"patient {pid!r} is not in {info_csv}")
        label = image.with_name(f"{pid}_sa_gt.nii.gz")
        frames = {}
        for phase in ("ED", "ES"):
            index = info[pid].get(phase.lower())
            if index is None or not index.isdigit():
                raise CMRDataError(Path(info_csv), f"patient {pid!r} has no integer {phase} frame index ({index!r})")
            frames[phase] = Frame(
                image=image,
                label=label if label.is_file() else None,
                time_index=int(index),
                label_convention=LabelConvention.MNMS,
            )
        records.append(_record(pid, frames, info[pid], "mnms"))
    if not records:
        raise CMRDataError(root, "no patients (expected <id>/<id>_sa.nii.gz as in M&Ms)")
    return records


def read_mnms2(root: str | Path, info_csv: str | Path | None = None) -> list[PatientRecord]:
    """Read the M&Ms-2 per-phase layout (``<id>_SA_ED.nii.gz``, ``<id>_SA_ED_gt.nii.gz``, ES likewise).

    Raises:
        CMRDataError: missing folder, no patients, or a patient with only one of ED/ES.
    """
    root = Path(root)
    if not root.is_dir():
        raise CMRDataError(root, "cohort folder not found")
    info = read_info_csv(info_csv) if info_csv is not None else {}
    records = Cohort(root=root)
    folders, records.skipped = list_subfolders(root)
    images = sorted(set(root.glob("*_SA_ED.nii.gz")) | {f for folder in folders for f in folder.glob("*_SA_ED.nii.gz")})
    for ed in images:
        pid = ed.name[: -len("_SA_ED.nii.gz")]
        frames = {}
        for phase in ("ED", "ES"):
            image = ed.with_name(f"{pid}_SA_{phase}.nii.gz")
            if not image.is_file():
                raise CMRDataError(image, f"missing {phase} frame image")
            label = ed.with_name(f"{pid}_SA_{phase}_gt.nii.gz")
            frames[phase] = Frame(
                image=image, label=label if label.is_file() else None, label_convention=LabelConvention.MNMS
            )
        records.append(_record(pid, frames, info.get(pid, {}), "mnms2"))
    if not records:
        raise CMRDataError(root, "no patients (expected <id>_SA_ED.nii.gz as in M&Ms-2)")
    return records

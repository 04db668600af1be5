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
"""Reader for the ACDC layout: ``patientNNN/Info.cfg`` and ``patientNNN_frameXX[_gt].nii.gz``."""

from __future__ import annotations

from pathlib import Path

from cmrsynth.data.records import Cohort, Frame, PatientRecord, list_subfolders
from cmrsynth.data.nifti import read_spacing
from cmrsynth.errors import CMRDataError

REQUIRED_INFO_KEYS = ("ED", "ES")


def parse_info_cfg(path: str | Path) -> dict[str, str]:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines).

    Raises:
        CMRDataError: missing file, a line without a colon, or no ED/ES key.
    """
    path = Path(path)
    if not path.is_file():
        raise CMRDataError(path, "missing Info.cfg (needed for the ED/ES frame numbers and the group)")
    info = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        if ":" not in line:
            raise CMRDataError(path, f"line {n} is not 'Key: value': {line!r}")
        key, value = line.split(":", 1)
        info[key.strip()] = value.strip()
    missing = [k for k in REQUIRED_INFO_KEYS if k not in info]
    if missing:
        raise CMRDataError(path, f"no {', '.join(missing)} entry; found keys {sorted(info)}")
    return info


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def read_acdc_patient(folder: str | Path) -> PatientRecord:
    """Read one ACDC patient folder into a PatientRecord (labels optional per frame).

    Raises:
        CMRDataError: missing Info.cfg, non-integer ED/ES, or a missing ED/ES image file.
    """
    folder = Path(folder)
    pid = folder.name
    info = parse_info_cfg(folder / "Info.cfg")
    frames = {}
    for phase in ("ED", "ES"):
        try:
            number = int(info[phase])
        except ValueError:
            raise CMRDataError(folder / "Info.cfg", f"{phase} frame {info[phase]!r} is not an integer") from None
        image = folder / f"{pid}_frame{number:02d}.nii.gz"
        if not image.is_file():
            raise CMRDataError(image, f"missing {phase} frame image (Info.cfg says {phase}: {number})")
        label = folder / f"{pid}_frame{number:02d}_gt.nii.gz"
        frames[phase] = Frame(image=image, label=label if label.is_file() else None)
    spacing = read_spacing(frames["ED"].image)
    return PatientRecord(
        patient_id=pid,
        group=info.get("Group"),
        frames=frames,
        height=_float_or_none(info.get("Height")),
        weight=_float_or_none(info.get("Weight")),
        source="acdc",
        spacing=spacing,
    )


def read_acdc(root: str | Path) -> list[PatientRecord]:
    """Read every ``patient*`` folder under ``root`` (ACDC training or testing layout).

    Patient folders that cannot be read (a symlink loop, a broken link, no permission) are skipped and listed in the
    returned Cohort's ``skipped`` with the reason.

    Raises:
        CMRDataError: ``root`` missing or holding no patient folders, or a bad patient folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise CMRDataError(root, "cohort folder not found")
    folders, skipped = list_subfolders(root, "patient")
    if not folders:
        why = f"; skipped: {skipped}" if skipped else ""
        raise CMRDataError(root, f"no patient folders (expected patientNNN/ with Info.cfg, as in ACDC){why}")
    return Cohort([read_acdc_patient(f) for f in folders], root=root, skipped=skipped)

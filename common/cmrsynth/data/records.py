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
"""The patient record that every reader returns, whatever the dataset layout."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from cmrsynth.labels import LabelConvention

#: Cardiac phases the product works with.
PHASES = ("ED", "ES")


@dataclass(frozen=True)
class Frame:
    """One cardiac phase of one patient.

    Attributes:
        image: NIfTI file holding the image (3D, or 4D cine with ``time_index``).
        label: NIfTI mask of the same geometry, or None for an unlabelled frame.
        time_index: 0-based frame in a 4D file; None for a 3D file.
        label_convention: convention of the label values on disk (converted at load time).
    """

    image: Path
    label: Path | None = None
    time_index: int | None = None
    label_convention: LabelConvention = LabelConvention.ACDC


@dataclass
class PatientRecord:
    """A patient as every reader returns it.

    Attributes:
        patient_id: identifier within its cohort (e.g. ``patient001``).
        group: pathology group (e.g. NOR, DCM, HCM, MINF, RV), or None when unknown.
        frames: phase name (ED, ES) to its Frame.
        height: cm, when known.
        weight: kg, when known.
        vendor: scanner vendor, when known.
        centre: acquisition centre, when known.
        source: the dataset or reader the record came from.
        spacing: voxel spacing (mm) of the first frame, filled by the reader when cheap to know.
    """

    patient_id: str
    group: str | None
    frames: dict[str, Frame]
    height: float | None = None
    weight: float | None = None
    vendor: str | None = None
    centre: str | None = None
    source: str = "unknown"
    spacing: tuple[float, float, float] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        """True when every frame has a mask."""
        return bool(self.frames) and all(f.label is not None for f in self.frames.values())


class Cohort(list):
    """The patients a reader found (a list of PatientRecord) plus what it could not read and why.

    Attributes:
        root: the cohort folder or datalist the patients came from (an input no output may overlap).
        skipped: entry name to the reason it was left out (symlink loop, broken link, unreadable folder), so that no
            patient is dropped without a word.
    """

    def __init__(self, records=(), root: str | Path | None = None, skipped: dict[str, str] | None = None):
        super().__init__(records)
        self.root = Path(root) if root is not None else None
        self.skipped = dict(skipped or {})


def list_subfolders(root: Path, prefix: str = "") -> tuple[list[Path], dict[str, str]]:
    """Sub-folders of ``root`` whose name starts with ``prefix``, and those that cannot be read, with the reason.

    ``Path.is_dir`` answers False for a symlink loop or a folder it cannot stat, which would drop a patient silently;
    here every such entry comes back with its reason instead.
    """
    folders, skipped = [], {}
    for p in sorted(root.iterdir()):
        if not p.name.startswith(prefix) or p.name.startswith("."):
            continue
        try:
            if not p.is_dir() and not p.is_symlink():
                continue
            os.stat(p)  # follows links: raises on a loop or a dangling link
            os.listdir(p)
        except OSError as exc:
            reason = {errno.ELOOP: "symlink loop", errno.ENOENT: "broken symlink", errno.EACCES: "unreadable folder "
                      "(permission denied)"}.get(exc.errno, f"unreadable folder ({exc.strerror})")
            skipped[p.name] = reason
            continue
        if p.is_dir():
            folders.append(p)
    return folders, skipped

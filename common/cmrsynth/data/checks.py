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
"""The one validation path of cmr-synth: geometry, memory, datalists and output folders.

Readers, ``scripts/prepare_data.py``, ``scripts/run_pipeline.py`` and the bundles call these functions; each raises
a ``CMRDataError`` naming the file and the problem. ``bundle_inputs`` is what a bundle config calls first (in its
``initialize`` list, before any folder is made): it turns that error into one line on stderr and exit status 2, as
the CLIs do (``report_and_exit``), instead of MONAI's config parser wrapping it in a long traceback.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmrsynth.errors import CMRDataError

#: exit status of every entry point (CLI or bundle) refusing bad input
EXIT_BAD_INPUT = 2
#: bytes one allocation sized from input geometry may take (override: environment CMRSYNTH_MAX_ALLOC_GB); a real
#: cine stack resampled to the reference 1.25 mm needs well under 100 MB
DEFAULT_MAX_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class GeometryLimits:
    """What geometry a cardiac short-axis volume may have, checked on every load.

    Attributes:
        in_plane_mm: allowed (min, max) in-plane voxel spacing; cardiac cine MR is 0.6-2.5 mm.
        through_plane_mm: allowed (min, max) slice spacing; short-axis stacks are 5-10 mm.
        affine_tolerance_mm: largest difference between any entry of an image's and its label's affine.
        check: False turns the spacing range off (finite, positive spacing and a valid affine are still required).
    """

    in_plane_mm: tuple[float, float] = (0.3, 5.0)
    through_plane_mm: tuple[float, float] = (2.0, 20.0)
    affine_tolerance_mm: float = 1e-3
    check: bool = True

    def __post_init__(self):
        for name in ("in_plane_mm", "through_plane_mm"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise ValueError(f"{name} must be a finite range 0 < min <= max, got {getattr(self, name)}")
        if not self.affine_tolerance_mm >= 0:
            raise ValueError(f"affine_tolerance_mm must be >= 0, got {self.affine_tolerance_mm}")


def check_spacing(path: str | Path, spacing: Sequence[float], limits: GeometryLimits = GeometryLimits()) -> None:
    """Refuse a non-finite, non-positive or implausible voxel spacing (x, y in plane; z through plane).

    Raises:
        CMRDataError: naming the spacing and the allowed range.
    """
    spacing = [float(s) for s in spacing]
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise CMRDataError(path, f"voxel spacing {spacing} mm is not finite and positive (header pixdim)")
    if not limits.check:
        return
    for axes, (lo, hi), what in ((spacing[:2], limits.in_plane_mm, "in-plane"), (spacing[2:3], limits.through_plane_mm, "slice")):
        bad = [s for s in axes if not lo <= s <= hi]
        if bad:
            raise CMRDataError(path, f"{what} spacing {bad[0]:g} mm is outside the plausible range {lo:g}-{hi:g} mm for "
                                     "cardiac MR (a wrong header?); set the spacing limits to accept it")


def check_affine(path: str | Path, header) -> np.ndarray:
    """The affine of a NIfTI header, refused when missing (qform and sform codes 0) or degenerate.

    Returns:
        (4, 4) affine (voxel to mm).

    Raises:
        CMRDataError: no affine, non-finite entries, a singular matrix, or voxel sizes that disagree with pixdim.
    """
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        raise CMRDataError(path, "no affine (qform_code and sform_code are 0): orientation and spacing are unknown")
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    if not np.isfinite(affine).all():
        raise CMRDataError(path, "degenerate affine: it holds NaN or Inf")
    columns = np.linalg.norm(affine[:3, :3], axis=0)
    if abs(np.linalg.det(affine[:3, :3])) <= 1e-6 * max(float(np.prod(columns)), 1e-12) or (columns == 0).any():
        raise CMRDataError(path, f"degenerate affine: singular rotation/scale part (voxel sizes {np.round(columns, 4).tolist()})")
    zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
    if header["sform_code"] == 0 and not np.allclose(columns, zooms, rtol=1e-2):  # qform is built from pixdim itself
        raise CMRDataError(path, f"affine voxel sizes {np.round(columns, 4).tolist()} disagree with pixdim {zooms.tolist()}")
    return affine


def check_affines_agree(image: str | Path, label: str | Path, a: np.ndarray, b: np.ndarray, tolerance: float) -> None:
    """Refuse a label whose affine differs from its image's by more than ``tolerance`` (mm) in any entry."""
    diff = float(np.abs(np.asarray(a) - np.asarray(b)).max())
    if diff > tolerance:
        raise CMRDataError(label, f"affine differs from its image's ({Path(image).name}) by up to {diff:.4g} mm "
                                  f"(tolerance {tolerance:g} mm): the label does not lie on the image")


def max_alloc_bytes() -> int:
    """The allocation limit: ``CMRSYNTH_MAX_ALLOC_GB`` (GiB) when set, else 2 GiB."""
    value = os.environ.get("CMRSYNTH_MAX_ALLOC_GB")
    if value is None:
        return DEFAULT_MAX_BYTES
    try:
        gb = float(value)
    except ValueError:
        raise ValueError(f"CMRSYNTH_MAX_ALLOC_GB must be a number of GiB, got {value!r}") from None
    return int(gb * 1024**3)


def check_allocation(path: str | Path, shape: Sequence[int], itemsize: int, what: str) -> None:
    """Refuse an array sized from input geometry that would exceed the allocation limit.

    Args:
        path: the input whose geometry sizes the array.
        shape: the array's shape.
        itemsize: bytes per element.
        what: what the array is, for the message.

    Raises:
        CMRDataError: naming the shape, the bytes it needs and the limit.
    """
    nbytes = int(np.prod([int(s) for s in shape], dtype=np.float64)) * int(itemsize)
    limit = max_alloc_bytes()
    if nbytes > limit:
        raise CMRDataError(path, f"{what} of shape {tuple(int(s) for s in shape)} would need {nbytes / 1024**3:.1f} GiB, "
                                 f"over the {limit / 1024**3:.1f} GiB limit (CMRSYNTH_MAX_ALLOC_GB); check the header's "
                                 "dimensions and spacing")


def _resolved(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def check_output_path(output: str | Path, inputs: Sequence[str | Path]) -> None:
    """Refuse an output path equal to, inside, or containing an input path (symlinks resolved), whatever overwrite says.

    Raises:
        CMRDataError: naming the output, the input and how they overlap.
    """
    out = _resolved(output)
    for inp in inputs:
        if inp is None:
            continue
        src = _resolved(inp)
        how = "is" if out == src else "is inside" if src in out.parents else "contains" if out in src.parents else None
        if how:
            raise CMRDataError(output, f"output {how} the input {inp}; inputs are never written: choose an output outside it")


def datalist_file(path: str | Path) -> Path:
    """A datalist JSON path: the file itself, or ``datalist.json`` in a folder."""
    path = Path(path)
    return path / "datalist.json" if path.is_dir() else path


def check_datalist(
    path: str | Path | None,
    sections: Sequence[str] = ("training",),
    keys: Sequence[str] = ("image", "label"),
    spatial_shape: Sequence[int] | None = None,
    read_data: bool = True,
) -> dict:
    """Check a MONAI datalist before anything uses it: the file exists and parses, each section is a non-empty list of
    entries, every referenced file exists and is a readable NIfTI, and all share one spatial shape.

    Args:
        path: the datalist JSON or the folder holding ``datalist.json``.
        sections: the sections that must be present and non-empty.
        keys: entry fields that must name a file (``image`` always; ``label`` where masks are needed).
        spatial_shape: the shape every file must have (e.g. the bundle's (image_size, image_size)); None: the first
            file's shape.
        read_data: decompress each file too (catches truncated data), not only its header.

    Returns:
        the parsed datalist.

    Raises:
        CMRDataError: naming the datalist or the file and the problem.
    """
    from cmrsynth.data.datalist import load_json
    from cmrsynth.data.nifti import load_array, read_shape

    if path is None or str(path) in ("", "None"):
        raise CMRDataError("<datalist>", "no datalist given (null): pass its path")
    file = datalist_file(path)
    data = load_json(file)
    if not isinstance(data, dict):
        raise CMRDataError(file, f"top level is a {type(data).__name__}; expected an object with sections {list(sections)}")
    shape = tuple(int(s) for s in spatial_shape) if spatial_shape is not None else None
    for section in sections:
        entries = data.get(section)
        if not isinstance(entries, list) or not entries:
            what = "missing" if section not in data else f"a {type(entries).__name__}" if not isinstance(entries, list) else "empty"
            raise CMRDataError(file, f"section {section!r} is {what}; expected a non-empty list (sections: {sorted(data)})")
        for n, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise CMRDataError(file, f"{section}[{n}] is a {type(entry).__name__}; expected an object with {list(keys)}")
            for key in keys:
                value = entry.get(key)
                if not isinstance(value, str) or not value:
                    raise CMRDataError(file, f"{section}[{n}] has {key} = {value!r}; expected a file path")
                f = (file.parent / value) if not os.path.isabs(value) else Path(value)
                if not f.is_file():
                    raise CMRDataError(f, f"{key} listed in {file} ({section}[{n}]) not found")
                found = tuple(load_array(f).shape) if read_data else read_shape(f)
                shape = found if shape is None else shape
                if found != shape:
                    raise CMRDataError(f, f"{key} has shape {found}; expected {shape} like the rest of {file.name}")
    return data


def error_line(exc: BaseException) -> str:
    """The one line a refused run prints: ``error: <file>: <problem>`` (whitespace of library messages folded)."""
    return "error: " + " ".join(str(exc).split())


def report_and_exit(exc: BaseException) -> None:
    """The one way bad input ends a run, CLI or bundle: one line on stderr, exit status 2."""
    print(error_line(exc), file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


def run_or_exit(job):
    """``job()``, with a ``CMRDataError`` it raises (bad input found while running, e.g. a mask generator whose masks
    are never plausible) ended as bad input is: one line, exit status 2; what it returns otherwise."""
    try:
        return job()
    except CMRDataError as exc:
        report_and_exit(exc)


def bundle_inputs(
    datalists: Sequence[Mapping] = (),
    outputs: Sequence[str | Path] = (),
    image_size: int | None = None,
    keys: Sequence[str] = ("image", "label"),
    files: Sequence[str | Path] = (),
) -> bool:
    """Validate a bundle's inputs before it creates anything; on bad input print one line and exit with status 2.

    Called first in a bundle's ``initialize`` list, e.g.
    ``{_target_: cmrsynth.data.checks.bundle_inputs, datalists: [{datalist: "@datalist", sections: [training]}]}``.

    Args:
        datalists: each ``{"datalist": path, "sections": [...]}`` or ``{"datalist": path, "key": section}`` (the form of
            seg_utility's ``sources``); with ``"optional": True`` a null datalist is skipped; ``"keys"`` overrides
            ``keys`` for that datalist (e.g. a mask set has labels only).
        outputs: folders the run writes (models/, eval/...): none may equal, lie inside or contain an input.
        image_size: the square slice size the bundle is configured for (None: not checked).
        keys: entry fields that must name files.
        files: other input files that must exist (e.g. a checkpoint the run starts from): paths, or
            ``{"path": ..., "problem": "what to say when it is missing"}``.

    Returns:
        True (so a ``$`` expression can chain on it).
    """
    try:
        inputs = []
        for item in datalists:
            if item.get("optional") and item.get("datalist") in (None, "", "None"):
                continue
            sections = item.get("sections") or [item.get("key", "training")]
            check_datalist(item.get("datalist"), sections, item.get("keys", keys), (image_size, image_size) if image_size else None)
            inputs.append(datalist_file(item["datalist"]).parent)
        for f in files:
            path, problem = (f["path"], f["problem"]) if isinstance(f, Mapping) else (f, "input file not found")
            if not Path(path).is_file():  # a run's own checkpoint may lie under its outputs: not an overlap input
                raise CMRDataError(path, problem)
        for out in outputs:
            check_output_path(out, inputs)
    except CMRDataError as exc:
        report_and_exit(exc)
    return True

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
"""Reading and writing NIfTI with checks that turn every kind of bad file into one clear error."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from cmrsynth.data.checks import GeometryLimits, check_affine, check_affines_agree, check_allocation, check_spacing
from cmrsynth.errors import CMRDataError
from cmrsynth.labels import unknown_label_values


def _read_error(path: Path, exc: Exception) -> CMRDataError:
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever the library printed
    if isinstance(exc, (gzip.BadGzipFile, zlib.error, EOFError, OSError)):
        return CMRDataError(path, f"corrupt or truncated file ({reason})")
    # nibabel raises plain ValueError / ImageFileError for bad headers and short data
    return CMRDataError(path, f"not a readable NIfTI image ({reason})")


def _open(path: str | Path) -> nib.Nifti1Image:
    path = Path(path)
    if not path.is_file():
        raise CMRDataError(path, "file not found")
    try:
        return nib.load(str(path))
    except Exception as exc:
        raise _read_error(path, exc) from None


def read_spacing(path: str | Path, limits: GeometryLimits = GeometryLimits(check=False)) -> tuple[float, float, float]:
    """Voxel spacing (mm) of the first three axes from the header alone: finite and positive, in range with ``limits``."""
    header = _open(path).header
    zooms = _spacing(header)
    check_spacing(path, zooms, limits)
    return zooms


def read_shape(path: str | Path) -> tuple[int, ...]:
    """The array shape a NIfTI header declares (trailing singleton axes dropped), with the same clear errors."""
    shape = tuple(int(s) for s in _open(path).shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _spacing(header) -> tuple[float, float, float]:
    zooms = tuple(float(z) for z in header.get_zooms()) + (1.0, 1.0, 1.0)
    if len(header.get_data_shape()) == 2:  # a 2D slice has no slice spacing of its own
        zooms = zooms[:2] + (1.0,)
    return zooms[0], zooms[1], zooms[2]


def load_array(path: str | Path) -> np.ndarray:
    """The voxel array of a NIfTI file as stored (no scaling to float), with the same clear errors."""
    image = _open(path)
    try:
        return np.asanyarray(image.dataobj)
    except Exception as exc:
        raise _read_error(Path(path), exc) from None


def load_volume(
    path: str | Path, time_index: int | None = None, limits: GeometryLimits = GeometryLimits()
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Load a short-axis volume as a 3D array (x, y, slice) with its voxel spacing in mm, geometry checked.

    Trailing singleton axes are dropped; a 4D cine file needs ``time_index`` to pick one frame.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        time_index: frame of a 4D file (0-based); must be None for 3D files.
        limits: the spacing range and affine checks (``cmrsynth.data.checks.GeometryLimits``).

    Returns:
        (array float32 of shape (X, Y, S), spacing (sx, sy, sz) in mm).

    Raises:
        CMRDataError: missing, corrupt or truncated file, wrong dimensionality, NaN/Inf values, a missing or
            degenerate affine, an implausible spacing, or a size over the allocation limit.
    """
    return _load_checked(path, time_index, limits)[:2]


def _load_checked(path, time_index, limits) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    img = _open(path)
    affine = check_affine(path, img.header)
    spacing = _spacing(img.header)
    check_spacing(path, spacing[: len(img.shape)], limits)  # a 2D slice has no slice spacing to check
    check_allocation(path, img.shape, 4 + img.get_data_dtype().itemsize, "the volume")  # as stored + float32 copy
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise _read_error(path, exc) from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim == 4:
        if time_index is None:
            raise CMRDataError(path, f"4D image of shape {data.shape} where a 3D volume was expected")
        if not 0 <= time_index < data.shape[3]:
            raise CMRDataError(path, f"frame {time_index} requested but the file has {data.shape[3]} frames")
        data = data[..., time_index]
    elif time_index is not None and time_index != 0:
        raise CMRDataError(path, f"frame {time_index} requested from a 3D volume of shape {data.shape}")
    if data.ndim != 3:
        raise CMRDataError(path, f"{data.ndim}D image of shape {data.shape}; expected a 3D short-axis volume")
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise CMRDataError(path, f"{n_bad} NaN or Inf voxel values")
    return data, spacing, affine


def load_frame(
    image: str | Path, label: str | Path | None, time_index: int | None = None, limits: GeometryLimits = GeometryLimits()
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
    """Load an image and its label (optional) with every check: geometry of each, affines that agree, label values.

    Returns:
        (image float32 (X, Y, S), label float32 (X, Y, S) or None, spacing (mm)).

    Raises:
        CMRDataError: as ``load_volume`` and ``check_label``, or a label affine that differs from the image's.
    """
    data, spacing, affine = _load_checked(image, time_index, limits)
    if label is None:
        return data, None, spacing
    mask, _, label_affine = _load_checked(label, time_index, limits)
    check_affines_agree(image, label, affine, label_affine, limits.affine_tolerance_mm)
    check_label(mask, label, data.shape)
    return data, mask, spacing


def check_label(label: np.ndarray, path: str | Path, image_shape: tuple[int, ...] | None = None) -> None:
    """Check a mask: integer values in 0..3 (a float file only when every value is integral), some foreground, and
    the image's shape.

    Raises:
        CMRDataError: naming ``path`` and the problem.
    """
    if image_shape is not None and tuple(label.shape) != tuple(image_shape):
        raise CMRDataError(path, f"label shape {tuple(label.shape)} does not match image shape {tuple(image_shape)}")
    bad = unknown_label_values(label)
    fractional = [v for v in bad if not float(v).is_integer()]
    if fractional:
        raise CMRDataError(path, f"non-integer label values {fractional[:5]}; a label file must hold whole numbers 0..3")
    if bad:
        raise CMRDataError(path, f"unknown label values {bad}; expected 0..3")
    if not (label > 0).any():
        raise CMRDataError(path, "empty mask: no foreground label in the volume")


def save_slice(path: str | Path, array: np.ndarray, spacing: tuple[float, float, float], dtype=np.float32) -> None:
    """Write a 2D slice as a NIfTI file with a plain diagonal affine and no source header fields."""
    affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))

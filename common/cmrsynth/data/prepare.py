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
"""Turn any reader's cohort into the product's 2D slice dataset plus a MONAI datalist JSON.

On-disk format: one 2D NIfTI per slice (``images/<patient>/<patient>_<phase>_<slice>.nii.gz``, float32 in
[-1, 1], and the same path under ``labels/`` as uint8 canonical labels), affine diag(spacing). NIfTI per slice
is what MONAI's LoadImaged reads with no custom code, what every stage hands on, and what a user can open in
any viewer; the files carry no source header fields. ``datalist.json`` lists slices under ``training``,
``validation`` and ``test`` (patient-level split) with patient, subject, group, phase, slice index and spacing,
and records the split, the privacy roles, the duplicate subjects found and the preprocessing settings.

Before the split, patient ids that hold the same person (``cmrsynth.data.duplicates``) are found; by default each
such group is split as one unit (``duplicates="together"``), or all ids but the first are left out (``"drop"``).
Every entry's ``subject`` is the first id of its group (its own id when it has no duplicate).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from monai.transforms import Compose

from cmrsynth.data.atomic import atomic_directory, write_json_atomic
from cmrsynth.data.checks import EXIT_BAD_INPUT, GeometryLimits, error_line
from cmrsynth.data.duplicates import DUPLICATE_THRESHOLD, DuplicateReport, find_duplicates
from cmrsynth.data.nifti import save_slice
from cmrsynth.data.records import PatientRecord
from cmrsynth.data.splits import ROLE_OF_SPLIT, SECTION_OF_SPLIT, split_patients
from cmrsynth.errors import CMRDataError, find_data_error
from cmrsynth.labels import CHANNEL_DEF, LabelConvention, looks_swapped
from cmrsynth.transforms import (
    HeartCentredCropd,
    LoadCardiacFramed,
    N4BiasCorrectiond,
    PercentileScaled,
    ResampleInPlaned,
    labelled_slices,
)

#: Output size presets: 128 is the paper's reference, 64 the CPU preset (the same ROI downsampled by 2).
PRESETS = {"reference": 128, "cpu": 64}
#: What to do with patient ids found to be one person: split them as one unit, keep only the first id, or not look.
DUPLICATE_POLICIES = ("together", "drop", "off")


@dataclass
class PrepareConfig:
    """Preprocessing settings, recorded in the datalist.

    Attributes:
        size: output slice size in pixels (square).
        fov_mm: side of the square ROI in mm; the spacing is fov_mm / size.
        lower_percentile: intensity clipping, lower percentile of each volume's ROI.
        upper_percentile: intensity clipping, upper percentile.
        n_central: keep only the N labelled slices nearest the middle of each volume (None keeps all).
        n4: N4 bias-field correction before scaling.
        fractions: train / val / test fractions of patients (stratified by group).
        seed: split seed.
        include_unlabelled: also write unlabelled patients' slices (image only, for generation).
        duplicates: ids found to be one person: ``together`` (one split), ``drop`` (keep the first id) or ``off``.
        duplicate_threshold: exact distance below which two ids are one person (``cmrsynth.data.duplicates``).
        geometry: spacing range and affine tolerance every volume is checked against.
        labels: the label convention on disk (``acdc`` or ``mnms``) for every patient, overriding the reader's and
            turning the swapped-convention check off; None keeps the reader's and checks it.
    """

    size: int = 64
    fov_mm: float = 160.0
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    n_central: int | None = None
    n4: bool = False
    fractions: tuple[float, float, float] = (5 / 7, 1 / 7, 1 / 7)
    seed: int = 0
    include_unlabelled: bool = False
    duplicates: str = "together"
    duplicate_threshold: float = DUPLICATE_THRESHOLD
    geometry: GeometryLimits = field(default_factory=GeometryLimits)
    labels: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.labels is not None and self.labels not in [c.value for c in LabelConvention]:
            raise ValueError(f"labels must be one of {[c.value for c in LabelConvention]} or None, got {self.labels!r}")
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {list(DUPLICATE_POLICIES)}, got {self.duplicates!r}")

    @property
    def spacing(self) -> float:
        """In-plane spacing of the output slices, mm."""
        return self.fov_mm / self.size


def preprocessing(cfg: PrepareConfig) -> Compose:
    """The volume preprocessing chain: load and check, [N4], resample, heart-centred crop, percentile scaling."""
    steps = [LoadCardiacFramed(limits=cfg.geometry)]
    if cfg.n4:
        steps.append(N4BiasCorrectiond())
    steps += [
        ResampleInPlaned(spacing=cfg.spacing),
        HeartCentredCropd(size=cfg.size),
        PercentileScaled(lower=cfg.lower_percentile, upper=cfg.upper_percentile),
    ]
    return Compose(steps, map_items=False, log_stats=False)


def _frame_input(record: PatientRecord, phase: str, labels: str | None) -> dict:
    f = record.frames[phase]
    convention = LabelConvention(labels) if labels is not None else f.label_convention
    return {"image": f.image, "label": f.label, "time_index": f.time_index, "label_convention": convention}


def check_conventions(swapped: dict[str, bool | None], records: list[PatientRecord], where: Path) -> None:
    """Refuse a cohort where most patients' labels look swapped after conversion (RV enclosed like an LV).

    Raises:
        CMRDataError: naming the likely cause (labels already in the other convention) and the override.
    """
    votes = {pid: v for pid, v in swapped.items() if v is not None}
    bad = sorted(pid for pid, v in votes.items() if v)
    if not votes or 2 * len(bad) <= len(votes):
        return
    used = {f.label_convention for r in records for f in r.frames.values() if f.label is not None}
    read_as = LabelConvention(sorted(used)[0]) if len(used) == 1 else LabelConvention.ACDC
    other = LabelConvention.ACDC if read_as is LabelConvention.MNMS else LabelConvention.MNMS
    raise CMRDataError(where, f"{len(bad)} of {len(votes)} patients ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}) "
                              f"look LV/RV-swapped after reading their labels as {read_as.value} (the RV value is enclosed "
                              f"by myocardium, as an LV is): the labels are likely already in the {other.value} convention; "
                              f"pass --labels {other.value} (or --labels {read_as.value} to keep this reading)")


def _skipped(records: list[PatientRecord], cfg: PrepareConfig) -> dict[str, str]:
    """Every patient or entry left out, with the reason: the reader's (symlink loop, unreadable) and the unlabelled."""
    skipped = dict(getattr(records, "skipped", {}))
    if not cfg.include_unlabelled:
        skipped.update({r.patient_id: "unlabelled (pass include_unlabelled to use it for generation)"
                        for r in records if not r.labelled})
    return skipped


def prepare_cohort(
    records: list[PatientRecord], out_dir: str | Path, cfg: PrepareConfig, overwrite: bool = False,
    inputs: list[str | Path] = (),
) -> dict:
    """Preprocess a cohort into 2D slices and a datalist, all or nothing.

    Args:
        records: patients from any reader.
        out_dir: output folder; built beside itself and moved into place only when complete.
        cfg: preprocessing settings.
        overwrite: replace an existing output folder that cmr-synth wrote.
        inputs: more input paths the output may not overlap (the cohort's ``root`` and every patient folder are
            added); inputs are never written, whatever ``overwrite`` says.

    Returns:
        summary: slice counts per patient and split, totals, cropped-away foreground, the duplicate groups found
        and the ids dropped, and every patient skipped with the reason.

    Raises:
        CMRDataError: the first bad file met, naming it and the problem (nothing is written), an output overlapping
            an input, or a cohort whose labels look LV/RV-swapped.
    """
    if not records:
        raise CMRDataError(out_dir, "no patients to prepare")
    usable = [r for r in records if r.labelled or cfg.include_unlabelled]
    if not usable:
        raise CMRDataError(out_dir, f"none of the {len(records)} patients has labels (pass include_unlabelled)")
    root = getattr(records, "root", None)
    inputs = [*inputs, *([root] if root is not None else []),
              *{p.parent for r in records for f in r.frames.values() for p in (f.image, f.label) if p is not None}]
    duplicates, dropped, subject = _duplicate_subjects(usable, cfg)
    usable = [r for r in usable if r.patient_id not in dropped]
    split = split_patients({r.patient_id: r.group for r in usable}, cfg.fractions, cfg.seed, duplicates.groups)
    chain = preprocessing(cfg)
    sections: dict[str, list[dict]] = {s: [] for s in SECTION_OF_SPLIT.values()}
    per_patient: dict[str, int] = {}
    lost = []
    swapped: dict[str, bool | None] = {}
    with atomic_directory(out_dir, overwrite=overwrite, inputs=inputs) as tmp:
        for record in usable:
            pid = record.patient_id
            per_patient[pid] = 0
            for phase in sorted(record.frames):
                d = _run_chain(chain, _frame_input(record, phase, cfg.labels))
                label = d.get("label")
                if label is not None and cfg.labels is None and swapped.get(pid) is None:
                    swapped[pid] = looks_swapped(label)
                slices = labelled_slices(label, cfg.n_central) if label is not None else range(d["image"].shape[2])
                if label is not None:
                    lost.append(d["foreground_lost"])
                for k in slices:
                    entry = _write_slice(tmp, record, phase, k, d, split[pid], subject.get(pid, pid))
                    sections[SECTION_OF_SPLIT[split[pid]]].append(entry)
                    per_patient[pid] += 1
        datalist = {
            "description": "cmr-synth prepared 2D short-axis slices (canonical labels: ACDC convention)",
            "labels": CHANNEL_DEF,
            "preprocessing": {**asdict(cfg), "spacing_mm": cfg.spacing},
            "patients": {
                r.patient_id: {
                    "group": r.group, "subject": subject.get(r.patient_id, r.patient_id),
                    "split": split[r.patient_id], "role": ROLE_OF_SPLIT[split[r.patient_id]],
                    "height": r.height, "weight": r.weight, "vendor": r.vendor, "centre": r.centre,
                    "source": r.source, "labelled": r.labelled,
                }
                for r in usable
            },
            "roles": {
                role: sorted(p for p, s in split.items() if ROLE_OF_SPLIT[s] == role) for role in ("member", "non_member")
            },
            "duplicate_groups": duplicates.groups,
            "duplicate_check": _duplicate_record(duplicates, cfg.duplicates, dropped),
            "skipped": _skipped(records, cfg),
            **sections,
        }
        check_conventions(swapped, usable, Path(out_dir))
        write_json_atomic(tmp / "datalist.json", datalist)
        skipped = _skipped(records, cfg)
        summary = {
            "patients": len(usable),
            "skipped": skipped,
            "skipped_unlabelled": sum(not (r.labelled or cfg.include_unlabelled) for r in records),
            "duplicate_groups": duplicates.groups,
            "dropped_duplicates": dropped,
            "slices": sum(per_patient.values()),
            "slices_per_split": {s: len(v) for s, v in sections.items()},
            "patients_per_split": dict(Counter(split.values())),
            "slices_per_patient": per_patient,
            "size": cfg.size,
            "spacing_mm": cfg.spacing,
            "max_foreground_lost_by_crop": max(lost) if lost else 0.0,
        }
        write_json_atomic(tmp / "summary.json", summary)
    return summary


def _duplicate_subjects(records: list[PatientRecord], cfg: PrepareConfig) -> tuple[DuplicateReport, list[str], dict]:
    """The duplicate check of a cohort under ``cfg.duplicates``: the report, the ids to leave out (``drop``: all
    but the first of each group) and patient id to subject (the first id of its group; absent: its own id)."""
    report = find_duplicates(records, cfg.duplicate_threshold) if cfg.duplicates != "off" else DuplicateReport()
    dropped = [pid for group in report.groups for pid in group[1:]] if cfg.duplicates == "drop" else []
    return report, dropped, {pid: group[0] for group in report.groups for pid in group}


def _duplicate_record(report: DuplicateReport, policy: str, dropped: list[str]) -> dict:
    """The datalist's record of the duplicate check: policy, thresholds, pairs found and ids left out."""
    return {"policy": policy, "dropped": dropped, **report.to_json()}


def duplicate_lines(summary: dict) -> list[str]:
    """Lines naming the duplicate subjects a preparation found, for the CLI and the pipeline (none: one line)."""
    groups = summary.get("duplicate_groups", [])
    if not groups:
        return ["duplicate subjects: none found"]
    dropped = set(summary.get("dropped_duplicates", []))
    how = "all but the first id left out" if dropped else "each group kept in one split"
    return [f"duplicate subjects: {len(groups)} group(s), {how}:"] + [
        "  " + " = ".join(p + (" (dropped)" if p in dropped else "") for p in group) for group in groups
    ]


def _run_chain(chain: Compose, frame: dict) -> dict:
    """Apply the preprocessing chain, re-raising a data error as itself rather than MONAI's RuntimeError wrapper."""
    try:
        return chain(frame)
    except RuntimeError as exc:
        data_error = find_data_error(exc)
        if data_error is None:
            raise
        raise data_error from None


def _write_slice(root: Path, record: PatientRecord, phase: str, k: int, d: dict, split: str, subject: str) -> dict:
    pid = record.patient_id
    name = f"{pid}/{pid}_{phase}_{k:02d}.nii.gz"
    (root / "images" / pid).mkdir(parents=True, exist_ok=True)
    save_slice(root / "images" / name, d["image"][:, :, k], d["spacing"], np.float32)
    entry = {"image": f"images/{name}"}
    if d.get("label") is not None:
        (root / "labels" / pid).mkdir(parents=True, exist_ok=True)
        save_slice(root / "labels" / name, d["label"][:, :, k], d["spacing"], np.uint8)
        entry["label"] = f"labels/{name}"
    n_slices = d["image"].shape[2]
    return {
        **entry,
        "patient": pid, "subject": subject, "group": record.group, "phase": phase, "slice": int(k), "n_slices": int(n_slices),
        "slice_position": round(k / max(n_slices - 1, 1), 4), "spacing": [float(s) for s in d["spacing"]],
        "split": split, "role": ROLE_OF_SPLIT[split],
    }


def read_cohort(reader: str, path: str | Path, info_csv: str | Path | None = None) -> list[PatientRecord]:
    """Read a cohort with a named reader: ``acdc``, ``mnms``, ``mnms2`` or ``datalist``."""
    from cmrsynth.data.acdc import read_acdc
    from cmrsynth.data.datalist import read_datalist_cohort
    from cmrsynth.data.mnms import read_mnms, read_mnms2

    if reader == "acdc":
        return read_acdc(path)
    if reader == "mnms":
        if info_csv is None:
            raise ValueError("the mnms reader needs the challenge's information CSV (--info-csv)")
        return read_mnms(path, info_csv)
    if reader == "mnms2":
        return read_mnms2(path, info_csv)
    if reader == "datalist":
        return read_datalist_cohort(path)
    raise ValueError(f"unknown reader {reader!r}; allowed: ['acdc', 'mnms', 'mnms2', 'datalist']")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``scripts/prepare_data.py``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", required=True, help="cohort folder (acdc, mnms, mnms2) or datalist JSON")
    p.add_argument("--reader", default="acdc", choices=["acdc", "mnms", "mnms2", "datalist"])
    p.add_argument("--info-csv", default=None, help="challenge information CSV (M&Ms)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="size preset: cpu=64, reference=128")
    p.add_argument("--size", type=int, default=64, help="output size in pixels (ignored with --preset)")
    p.add_argument("--fov-mm", type=float, default=160.0, help="side of the heart-centred ROI in mm")
    p.add_argument("--percentiles", type=float, nargs=2, default=(0.5, 99.5), help="intensity clipping")
    p.add_argument("--n-central", type=int, default=None, help="keep only N central labelled slices per volume")
    p.add_argument("--n4", action="store_true", help="N4 bias-field correction (SimpleITK)")
    p.add_argument("--fractions", type=float, nargs=3, default=(5 / 7, 1 / 7, 1 / 7), help="train val test")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--include-unlabelled", action="store_true", help="also write unlabelled patients' slices")
    p.add_argument("--duplicates", choices=DUPLICATE_POLICIES, default="together",
                   help="patient ids found to be one person: keep each group in one split, keep only its first id, or skip the check")
    p.add_argument("--duplicate-threshold", type=float, default=DUPLICATE_THRESHOLD,
                   help="distance below which two ids are one person (z-scored aligned slices, RMS; measured on ACDC)")
    p.add_argument("--labels", choices=[c.value for c in LabelConvention], default=None,
                   help="label convention on disk for every patient (acdc: 1 RV 3 LV; mnms: 1 LV 3 RV); overrides the "
                        "reader's and the check that refuses a cohort that looks LV/RV-swapped")
    limits = GeometryLimits()
    p.add_argument("--in-plane-mm", type=float, nargs=2, default=limits.in_plane_mm, metavar=("MIN", "MAX"),
                   help="plausible in-plane spacing; a volume outside is refused")
    p.add_argument("--slice-mm", type=float, nargs=2, default=limits.through_plane_mm, metavar=("MIN", "MAX"),
                   help="plausible slice spacing; a volume outside is refused")
    p.add_argument("--any-spacing", action="store_true", help="accept any finite positive spacing (no plausible range)")
    p.add_argument("--affine-tolerance-mm", type=float, default=limits.affine_tolerance_mm,
                   help="largest difference between an image's and its label's affine entries")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder written by cmr-synth (never an input, never another folder)")
    p.add_argument("--preview", action="store_true", help="also draw <out>/preview.png (slices with mask overlays)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: prepare a cohort; bad input prints one line naming the file and exits with status 2."""
    args = build_parser().parse_args(argv)
    try:
        cfg = _config(args)
        records = read_cohort(args.reader, args.input, args.info_csv)
        summary = prepare_cohort(records, args.out, cfg, overwrite=args.overwrite,
                                 inputs=[args.input, *([args.info_csv] if args.info_csv else [])])
    except (CMRDataError, FileExistsError, ValueError, OSError) as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.preview:
        from cmrsynth.report import datalist_preview

        datalist_preview(args.out, Path(args.out) / "preview.png", n=18)
    print(
        f"prepared {summary['patients']} patients, {summary['slices']} slices at {cfg.size}x{cfg.size} "
        f"({cfg.spacing:.3g} mm): {summary['slices_per_split']} -> {Path(args.out) / 'datalist.json'}"
    )
    print("\n".join(duplicate_lines(summary) + skipped_lines(summary)))
    return 0


def skipped_lines(summary: dict) -> list[str]:
    """Lines naming every patient left out and why (none: one line), for the CLI and the pipeline."""
    skipped = summary.get("skipped", {})
    if not skipped:
        return ["skipped patients: none"]
    return [f"skipped patients: {len(skipped)}"] + [f"  {pid}: {why}" for pid, why in sorted(skipped.items())]


def _config(args: argparse.Namespace) -> PrepareConfig:
    """The PrepareConfig of parsed command-line options."""
    geometry = GeometryLimits(in_plane_mm=tuple(args.in_plane_mm), through_plane_mm=tuple(args.slice_mm),
                              affine_tolerance_mm=args.affine_tolerance_mm, check=not args.any_spacing)
    return PrepareConfig(
        size=PRESETS[args.preset] if args.preset else args.size,
        fov_mm=args.fov_mm,
        lower_percentile=args.percentiles[0],
        upper_percentile=args.percentiles[1],
        n_central=args.n_central,
        n4=args.n4,
        fractions=tuple(args.fractions),
        seed=args.seed,
        include_unlabelled=args.include_unlabelled,
        duplicates=args.duplicates,
        duplicate_threshold=args.duplicate_threshold,
        geometry=geometry,
        labels=args.labels,
    )


if __name__ == "__main__":
    sys.exit(main())

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
"""Generation entry points of the generator bundles: sample, post-process, write NIfTI + datalist + figures.

Outputs are shareable: synthetic files carry ids ``syn00000``..., the pathology group and phase, and no source
header fields or patient ids. Where images are generated from real masks, the link to the source mask (needed
for paired fidelity metrics) goes to ``provenance.json`` only, which is not part of a release.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from cmrsynth.data.atomic import atomic_directory, write_json_atomic
from cmrsynth.data.nifti import save_slice
from cmrsynth.errors import CMRDataError
from cmrsynth.generative import Generator
from cmrsynth.labels import CHANNEL_DEF, NUM_CLASSES, unknown_label_values
from cmrsynth.masks import plausibility, postprocess_mask, shape_stats
from cmrsynth.report import save_overlay_grid


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _write_pair(root: Path, name: str, image: np.ndarray, mask: np.ndarray, source: dict) -> dict:
    """Write ``images/<name>.nii.gz`` and ``labels/<name>.nii.gz`` under ``root`` with the source entry's spacing;
    return their datalist entry (relative paths, group, phase, spacing) without anything identifying the source."""
    spacing = tuple(source.get("spacing", (2.5, 2.5, 1.0)))
    for folder, array, dtype in (("images", image, np.float32), ("labels", mask, np.uint8)):
        (root / folder).mkdir(exist_ok=True)
        save_slice(root / folder / f"{name}.nii.gz", array, spacing, dtype)
    return {"image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz", "group": source.get("group"),
            "phase": source.get("phase"), "spacing": list(spacing)}


def _sampling_summary(generator: Generator, sampler, steps, guidance_scale, nfe: list[int], seconds: float, n: int) -> dict:
    return {**generator.settings(sampler, steps, guidance_scale), "nfe": max(nfe) if nfe else 0,
            "seconds_per_sample": seconds / max(n, 1)}


def generate_masks(
    generator: Generator,
    out_dir: str | Path,
    per_class: int = 8,
    spacing: float = 2.5,
    sampler: str | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    keep_implausible: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    only: dict | None = None,
) -> dict:
    """Sample ``per_class`` masks for every class of the generator ((group, phase[, position])), or of the classes
    ``only`` names (e.g. {"position": ["apical"]}), clean them, check plausibility before and after cleaning, write
    label NIfTIs and a datalist. Sampler, steps and guidance default to the generator's own.

    Returns:
        summary with counts, plausibility rate (before dropping; also before post-processing), failed checks,
        sampler, NFE and seconds per mask.
    """
    plan = generator.classes.plan(per_class, only)
    rng = torch.Generator().manual_seed(seed)
    generator = generator.to(device).eval()
    t0 = time.perf_counter()
    masks, nfe = [], []
    for sl in _batches(len(plan), batch_size):
        chunk = plan[sl]
        labels = torch.tensor([c["class"] for c in chunk], device=device) if generator.classes.groups else None
        x, used = generator.sample(len(chunk), class_labels=labels, sampler=sampler, num_inference_steps=num_inference_steps,
                                   guidance_scale=guidance_scale, generator=rng)
        masks.extend(x.argmax(1).to(torch.uint8).cpu().numpy())
        nfe.append(used)
    sampling = _sampling_summary(generator, sampler, num_inference_steps, guidance_scale, nfe, time.perf_counter() - t0, len(plan))
    entries, checks, raw_checks, failed, failed_raw = [], [], [], Counter(), Counter()
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "labels").mkdir()
        for i, (condition, raw) in enumerate(zip(plan, masks)):
            raw_check, mask = plausibility(raw), postprocess_mask(raw)
            check = plausibility(mask)
            checks.append(check["plausible"])
            raw_checks.append(raw_check["plausible"])
            failed.update(k for k, ok in check.items() if not ok and k != "plausible")
            failed_raw.update(k for k, ok in raw_check.items() if not ok and k != "plausible")
            if not check["plausible"] and not keep_implausible:
                continue
            sid = f"syn{i:05d}"
            save_slice(tmp / "labels" / f"{sid}.nii.gz", mask, (spacing, spacing, 1.0), np.uint8)
            entries.append({"label": f"labels/{sid}.nii.gz", "synthetic_id": sid, "group": condition["group"],
                            "phase": condition["phase"], **({"position": condition["position"]} if condition["position"] else {}),
                            "plausible": check["plausible"], "plausible_before_postprocessing": raw_check["plausible"],
                            **shape_stats(mask, spacing)})
        summary = {
            "generated": len(plan), "written": len(entries), "plausibility_rate": float(np.mean(checks)),
            "plausibility_rate_before_postprocessing": float(np.mean(raw_checks)),
            "failed_checks": dict(failed), "failed_checks_before_postprocessing": dict(failed_raw), "implausible_kept": keep_implausible,
            "seconds_per_mask": sampling.pop("seconds_per_sample"), **sampling,
        }
        write_json_atomic(tmp / "datalist.json", {"description": "cmr-synth synthetic masks", "labels": CHANNEL_DEF,
                                                 "synthetic": entries, "summary": summary})
        shown = entries[:: max(1, len(entries) // 24)][:24]
        if shown:
            grid = [np.asanyarray(nib.load(tmp / e["label"]).dataobj) for e in shown]
            save_overlay_grid([np.zeros_like(m, np.float32) for m in grid], grid, tmp / "masks.png",
                              [" ".join(e.get(k) or "" for k in ("group", "phase", "position")) for e in shown], ncols=8)
    return summary


def _load_masks(datalist: str | Path, key: str) -> tuple[list[dict], Path]:
    path = Path(datalist)
    entries = json.loads(path.read_text())[key]
    if not entries:
        raise ValueError(f"{path}: no entries under {key!r}")
    return entries, path.parent


def read_masks(root: Path, entries: list[dict]) -> list[np.ndarray]:
    """The integer masks of datalist entries; a missing file or a value outside the label schema is one
    ``CMRDataError`` naming the file."""
    masks = []
    for e in entries:
        path = root / e["label"]
        if not path.is_file():
            raise CMRDataError(path, "mask file not found")
        mask = np.asanyarray(nib.load(path).dataobj)
        bad = unknown_label_values(mask)
        if bad:
            raise CMRDataError(path, f"label values {bad} are outside the schema; allowed: 0 background, 1 RV cavity, "
                                     "2 myocardium, 3 LV cavity (convert other conventions with cmrsynth.labels)")
        masks.append(mask.astype(np.int64))
    return masks


def generate_images(
    generator: Generator,
    mask_datalist: str | Path,
    out_dir: str | Path,
    mask_key: str = "synthetic",
    sampler: str | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    max_images: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
) -> dict:
    """Generate one image per mask of a datalist; write image + label NIfTI pairs, a datalist and a grid.

    Args:
        generator: a mask-conditioned ``Generator`` (its classes decide the class conditioning).
        mask_datalist: a datalist whose entries under ``mask_key`` have a ``label`` (mask_generator output,
            or a prepared real datalist with ``mask_key="test"``).
        sampler, num_inference_steps, guidance_scale: override the generator's defaults.

    Returns:
        summary with counts, sampler, NFE and seconds per image.
    """
    generator.check_sampler(sampler or generator.sampler)
    entries, root = _load_masks(mask_datalist, mask_key)
    entries = entries[:max_images] if max_images else entries
    if any(e.get("role") == "member" for e in entries):
        logging.getLogger(__name__).warning(
            f"{mask_datalist} [{mask_key}]: drawing from training patients' own masks; such images carry those patients' "
            "appearance (privacy_audit's reconstruction attack) and its release gate removes them")
    masks = read_masks(root, entries)
    rng = torch.Generator().manual_seed(seed)
    generator = generator.to(device).eval()
    t0 = time.perf_counter()
    images, nfe = [], []
    for sl in _batches(len(entries), batch_size):
        m = torch.from_numpy(np.stack(masks[sl]))
        onehot = F.one_hot(m, NUM_CLASSES).permute(0, 3, 1, 2).float().to(device)
        x, used = generator.sample(mask=onehot, class_labels=generator.classes.labels(entries[sl], device), sampler=sampler,
                                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=rng)
        images.extend(x[:, 0].clamp(-1, 1).cpu().numpy())
        nfe.append(used)
    sampling = _sampling_summary(generator, sampler, num_inference_steps, guidance_scale, nfe, time.perf_counter() - t0, len(entries))
    out_entries, provenance = [], {}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for i, (e, image, mask) in enumerate(zip(entries, images, masks)):
            sid = f"syn{i:05d}"
            out_entries.append({**_write_pair(tmp, sid, image, mask, e), "synthetic_id": sid})
            provenance[sid] = {"mask_datalist": str(Path(mask_datalist).absolute()), "mask_key": mask_key, "index": i,
                               "source_label": str((root / e["label"]).absolute())}
        summary = {"generated": len(out_entries), "seconds_per_image": sampling.pop("seconds_per_sample"), **sampling}
        write_json_atomic(tmp / "datalist.json", {"description": "cmr-synth synthetic images with their masks",
                                                 "labels": CHANNEL_DEF, "training": out_entries, "summary": summary})
        write_json_atomic(tmp / "provenance.json", provenance)  # private: links to source masks, never released
        shown = list(range(0, len(images), max(1, len(images) // 12)))[:12]
        save_overlay_grid([images[i] for i in shown] + [images[i] for i in shown],
                          [None] * len(shown) + [masks[i] for i in shown], tmp / "samples.png", ncols=len(shown))
    return summary


@torch.no_grad()
def reconstruct_images(codec, datalist: str | Path, out_dir: str | Path, key: str = "validation", batch_size: int = 32,
                       device: str | torch.device = "cpu", overwrite: bool = False) -> dict:
    """Pass the real slices of a datalist section through a codec (encode, decode) and measure what survives.

    Writes the reconstructions with their true masks as an image datalist (key ``training``), so seg_utility's
    fidelity.yaml can score them with the real-only segmenter (its Dice against the true mask tells whether the
    myocardium survives the autoencoder, which PSNR alone does not). These are copies of real patients' slices, not
    synthetic data: never share them.

    Returns:
        summary: slices, mean and SD of PSNR and SSIM (data range 2, slices in [-1, 1]), seconds per slice.
    """
    from monai.metrics import PSNRMetric, SSIMMetric

    entries, root = _load_masks(datalist, key)
    masks = read_masks(root, entries)
    real = [np.asanyarray(nib.load(root / e["image"]).dataobj).astype(np.float32) for e in entries]
    codec = codec.to(device).eval()
    psnr, ssim = PSNRMetric(max_val=2.0), SSIMMetric(spatial_dims=2, data_range=2.0)
    t0, recon = time.perf_counter(), []
    for sl in _batches(len(entries), batch_size):
        x = torch.from_numpy(np.stack(real[sl]))[:, None].to(device)
        y = codec.decode(codec.encode(x)).clamp(-1, 1)
        psnr(y, x), ssim(y, x)
        recon.extend(y[:, 0].cpu().numpy())
    seconds = (time.perf_counter() - t0) / len(entries)
    scores = {name: metric.get_buffer().flatten().cpu().numpy() for name, metric in (("psnr", psnr), ("ssim", ssim))}
    summary = {"slices": len(entries), "source_key": key, "seconds_per_slice": seconds,
               **{f"{n}_{stat}": float(getattr(np, stat)(v)) for n, v in scores.items() for stat in ("mean", "std")}}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        out_entries = [{**_write_pair(tmp, f"rec{i:05d}", image, mask, e), "psnr": float(scores["psnr"][i]),
                        "ssim": float(scores["ssim"][i])} for i, (e, image, mask) in enumerate(zip(entries, recon, masks))]
        write_json_atomic(tmp / "datalist.json", {"description": "autoencoder reconstructions of real slices (copies of "
                                                 "patients' data: do not share)", "labels": CHANNEL_DEF,
                                                 "training": out_entries, "summary": summary})
        shown = list(range(0, len(recon), max(1, len(recon) // 8)))[:8]
        save_overlay_grid([real[i] for i in shown] + [recon[i] for i in shown], None, tmp / "reconstructions.png",
                          ["real"] * len(shown) + [f"PSNR {scores['psnr'][i]:.1f}" for i in shown], ncols=len(shown))
    return summary

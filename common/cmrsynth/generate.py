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
from contextlib import contextmanager
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
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """Generate one image per mask of a datalist; write image + label NIfTI pairs, a datalist and a grid.

    Args:
        generator: a mask-conditioned ``Generator`` (its classes decide the class conditioning).
        mask_datalist: a datalist whose entries under ``mask_key`` have a ``label`` (mask_generator output,
            or a prepared real datalist with ``mask_key="test"``).
        sampler, num_inference_steps, guidance_scale: override the generator's defaults.
        rank, world_size: with several processes, rank r draws masks r, r + world_size, ... into a shard folder
            beside ``out_dir`` (ids keep the mask's index); ``merge_shards`` then writes ``out_dir``.

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
    planned = len(entries)
    indices = list(range(rank, planned, world_size))
    entries = [entries[i] for i in indices]
    masks = read_masks(root, entries)
    rng = torch.Generator().manual_seed(seed + rank)
    generator = generator.to(device).eval()
    t0 = time.perf_counter()
    images, nfe = [], []
    for sl in _batches(len(entries), batch_size):
        onehot = _one_hot(masks[sl], device)
        x, used = generator.sample(mask=onehot, class_labels=generator.classes.labels(entries[sl], device), sampler=sampler,
                                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=rng)
        images.extend(x[:, 0].clamp(-1, 1).cpu().numpy())
        nfe.append(used)
    sampling = _sampling_summary(generator, sampler, num_inference_steps, guidance_scale, nfe, time.perf_counter() - t0, len(entries))
    out_entries, provenance = [], {}
    target = Path(out_dir) if world_size == 1 else shard_dir(out_dir, rank)
    with atomic_directory(target, overwrite=overwrite or world_size > 1) as tmp:
        for i, e, image, mask in zip(indices, entries, images, masks):
            sid = f"syn{i:05d}"
            out_entries.append({**_write_pair(tmp, sid, image, mask, e), "synthetic_id": sid})
            provenance[sid] = {"mask_datalist": str(Path(mask_datalist).absolute()), "mask_key": mask_key, "index": i,
                               "source_label": str((root / e["label"]).absolute())}
        summary = {"generated": len(out_entries), "seconds_per_image": sampling.pop("seconds_per_sample"), **sampling}
        if world_size > 1:
            summary.update(planned=planned, shard=rank, shards=world_size)
        write_json_atomic(tmp / "datalist.json", {"description": "cmr-synth synthetic images with their masks",
                                                 "labels": CHANNEL_DEF, "training": out_entries, "summary": summary})
        write_json_atomic(tmp / "provenance.json", provenance)  # private: links to source masks, never released
        if world_size == 1:
            _samples_grid(images, masks, tmp / "samples.png")
    return summary


def _samples_grid(images: list[np.ndarray], masks: list[np.ndarray], png: Path) -> None:
    shown = list(range(0, len(images), max(1, len(images) // 12)))[:12]
    save_overlay_grid([images[i] for i in shown] + [images[i] for i in shown],
                      [None] * len(shown) + [masks[i] for i in shown], png, ncols=len(shown))


def shard_dir(out_dir: str | Path, rank: int) -> Path:
    """Where rank ``rank`` of a sharded ``generate_images`` writes (beside ``out_dir``)."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.shard{rank}")


def merge_shards(out_dir: str | Path, world_size: int, overwrite: bool = True) -> dict:
    """Merge the shard folders of a sharded ``generate_images`` into ``out_dir`` (one datalist, ids in mask order) and
    remove them; refuses, naming the shard, a missing shard or a set of ids with a gap or a duplicate."""
    import shutil

    shards = [shard_dir(out_dir, r) for r in range(world_size)]
    for shard in shards:
        if not (shard / "datalist.json").is_file():
            raise CMRDataError(shard, f"shard missing: every one of the {world_size} processes must finish before the merge")
    parts = [json.loads((shard / "datalist.json").read_text()) for shard in shards]
    entries = sorted((e for p in parts for e in p["training"]), key=lambda e: int(e["synthetic_id"].removeprefix("syn")))
    planned = parts[0]["summary"]["planned"]
    ids = [e["synthetic_id"] for e in entries]
    if ids != [f"syn{i:05d}" for i in range(planned)]:
        raise CMRDataError(shards[0].parent, f"shards hold {len(ids)} images ({len(set(ids))} distinct ids) for {planned} masks")
    provenance = {k: v for shard in shards for k, v in json.loads((shard / "provenance.json").read_text()).items()}
    summaries = [p["summary"] for p in parts]
    summary = {**{k: v for k, v in summaries[0].items() if k not in ("shard", "planned")}, "generated": len(entries),
               "seconds_per_image": sum(x["seconds_per_image"] * x["generated"] for x in summaries) / max(len(entries), 1)}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for shard in shards:
            for folder in ("images", "labels"):
                if (shard / folder).is_dir():  # a rank with no mask to draw wrote none
                    shutil.copytree(shard / folder, tmp / folder, dirs_exist_ok=True)
        write_json_atomic(tmp / "datalist.json", {**parts[0], "training": entries, "summary": summary})
        write_json_atomic(tmp / "provenance.json", provenance)
        _samples_grid([np.asanyarray(nib.load(tmp / e["image"]).dataobj) for e in entries],
                      [np.asanyarray(nib.load(tmp / e["label"]).dataobj) for e in entries], tmp / "samples.png")
    for shard in shards:
        shutil.rmtree(shard)
    return summary


@contextmanager
def _timed(seconds: Counter, part: str):
    """Add the seconds the block takes to ``seconds[part]``."""
    start = time.perf_counter()
    yield
    seconds[part] += time.perf_counter() - start


def _sample_in_chunks(model: Generator, chunk: int, n: int, mask=None, class_labels=None, **options) -> tuple[torch.Tensor, int]:
    """``model.sample`` of n samples, ``chunk`` at a time (small batches run faster per sample on a CPU)."""
    pick = lambda x, sl: None if x is None else x[sl]  # noqa: E731
    drawn = [model.sample(sl.stop - sl.start, mask=pick(mask, sl), class_labels=pick(class_labels, sl), **options)
             for sl in _batches(n, chunk)]
    return torch.cat([x for x, _ in drawn]), drawn[-1][1]


def _one_hot(masks: list[np.ndarray], device) -> torch.Tensor:
    return F.one_hot(torch.from_numpy(np.stack(masks)).long(), NUM_CLASSES).permute(0, 3, 1, 2).float().to(device)


@torch.no_grad()
def sample_pairs(
    mask_generator: Generator,
    image_generator: Generator,
    out_dir: str | Path,
    num_pairs: int = 1000,
    batch_size: int = 64,
    network_batch: int = 16,
    mask_sampler: str | None = None,
    mask_steps: int | None = None,
    image_sampler: str | None = None,
    image_steps: int | None = None,
    spacing: float = 2.5,
    max_draws: int | None = None,
    keep_implausible: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
) -> dict:
    """The whole chain at speed: ``num_pairs`` (mask, image) pairs, drawn in batches.

    Masks cycle through the mask generator's classes; each is cleaned (``postprocess_mask``) and an implausible one
    is replaced by a new draw; the image generator then draws an image on each plausible mask (with its group and
    phase where it is class-conditional). Writes image + label NIfTI pairs, a datalist (key ``training``, as
    ``generate_images``) and ``samples.png``; nothing identifying, no provenance (no real mask is involved).

    Args:
        batch_size: masks drawn, cleaned and written per round.
        network_batch: samples per network call within a round (on a 2-core CPU, 16 ran 1.5x faster per sample
            than 64: the activations stay in cache).
        mask_sampler, mask_steps, image_sampler, image_steps: override each generator's own sampler and steps.
        max_draws: masks drawn at most before giving up (default 3 x num_pairs): a generator whose masks are rarely
            plausible fails with one clear line instead of sampling forever.
        keep_implausible: keep every mask (each entry records whether it was plausible).

    Returns:
        summary: pairs, pairs per second (drawing, cleaning and writing the pairs; not the datalist and figure written
        after them), seconds per part (mask network, mask cleaning, image network, writing), plausibility of the drawn
        masks, each stage's settings and NFE.
    """
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    max_draws = max_draws or 3 * num_pairs
    mask_generator, image_generator = mask_generator.to(device).eval(), image_generator.to(device).eval()
    image_generator.check_sampler(image_sampler or image_generator.sampler)
    cells, rng, seconds = mask_generator.classes.plan(1), torch.Generator().manual_seed(seed), Counter()
    entries, shown, nfe, drawn, plausible = [], [], {}, 0, 0
    t0 = time.perf_counter()
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        while len(entries) < num_pairs:
            if drawn >= max_draws:
                raise CMRDataError(Path(out_dir), f"only {len(entries)} plausible masks in {drawn} draws; the mask generator "
                                                  "is not trained well enough for sample_pairs (raise max_draws to insist)")
            wanted = num_pairs - len(entries)  # the last round draws what is missing (and a margin), not a whole batch
            size = min(batch_size, max(network_batch, wanted + wanted // 4))
            chunk = [cells[(drawn + i) % len(cells)] for i in range(size)]
            drawn += len(chunk)
            with _timed(seconds, "mask_network"):
                labels = torch.tensor([c["class"] for c in chunk], device=device) if mask_generator.classes.groups else None
                x, nfe["mask"] = _sample_in_chunks(mask_generator, network_batch, len(chunk), class_labels=labels,
                                                   sampler=mask_sampler, num_inference_steps=mask_steps, generator=rng)
            with _timed(seconds, "mask_cleaning"):
                cleaned = [postprocess_mask(m) for m in x.argmax(1).to(torch.uint8).cpu().numpy()]
                ok = [plausibility(m)["plausible"] for m in cleaned]
                plausible += sum(ok)
                keep = [i for i in range(len(cleaned)) if ok[i] or keep_implausible][: num_pairs - len(entries)]
            if not keep:
                continue
            conditions, masks = [chunk[i] for i in keep], [cleaned[i] for i in keep]
            with _timed(seconds, "image_network"):
                images, nfe["image"] = _sample_in_chunks(image_generator, network_batch, len(masks), mask=_one_hot(masks, device),
                                                         class_labels=image_generator.classes.labels(conditions, device),
                                                         sampler=image_sampler, num_inference_steps=image_steps, generator=rng)
                images = images[:, 0].clamp(-1, 1).cpu().numpy()
            with _timed(seconds, "writing"):
                for i, condition, image, mask in zip(keep, conditions, images, masks):
                    sid = f"syn{len(entries):05d}"
                    entry = _write_pair(tmp, sid, image, mask, {**condition, "spacing": (spacing, spacing, 1.0)})
                    entries.append({**entry, "synthetic_id": sid, "plausible": ok[i],
                                    **({"position": condition["position"]} if condition["position"] else {})})
            shown += list(zip(images, masks))[: 12 - len(shown)]
        elapsed = time.perf_counter() - t0
        summary = {
            "pairs": len(entries), "batch_size": batch_size, "network_batch": network_batch,
            "pairs_per_second": len(entries) / elapsed, "seconds": elapsed, "seconds_by_part": dict(seconds),
            "masks_drawn": drawn, "mask_plausibility_rate": plausible / drawn,
            "mask": {**mask_generator.settings(mask_sampler, mask_steps), "nfe": nfe.get("mask", 0)},
            "image": {**image_generator.settings(image_sampler, image_steps), "nfe": nfe.get("image", 0)},
        }
        write_json_atomic(tmp / "datalist.json", {"description": "cmr-synth synthetic (mask, image) pairs", "labels": CHANNEL_DEF,
                                                 "training": entries, "summary": summary})
        save_overlay_grid([i for i, _ in shown] * 2, [None] * len(shown) + [m for _, m in shown], tmp / "samples.png",
                          ncols=len(shown))
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

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
"""The seg_utility stage: build a training set from real and synthetic datalists, and score a segmenter on real
patients (per patient volume) with a figure of its predictions.

Training modes (all one function, chosen by the sources listed in the config):
- real only: ``[{datalist: real, key: training}]``
- synthetic only: ``[{datalist: synthetic}]``
- real + synthetic at a ratio: ``[{datalist: real}, {datalist: synthetic, ratio: 1.0}]`` (synthetic slices =
  ratio x real slices)
- few-real: ``[{datalist: real, patients: 5}, {datalist: synthetic}]``
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from cmrsynth.data.datalist import load_json
from cmrsynth.errors import CMRDataError


def _absolute(entry: dict, root: Path) -> dict:
    return {**entry, **{k: str((root / entry[k]).resolve()) for k in ("image", "label") if k in entry}}


def _pick_patients(entries: list[dict], k: int, rng: np.random.Generator, path: Path) -> list[dict]:
    """Keep the slices of k patients, drawn round-robin over groups so small k stays balanced."""
    by_group: dict[str, list[str]] = {}
    for e in entries:
        by_group.setdefault(str(e.get("group")), [])
        if e["patient"] not in by_group[str(e.get("group"))]:
            by_group[str(e.get("group"))].append(e["patient"])
    n_patients = sum(len(v) for v in by_group.values())
    if k > n_patients:
        raise CMRDataError(path, f"{k} patients requested but the datalist has {n_patients}")
    pools = {g: list(rng.permutation(sorted(v))) for g, v in sorted(by_group.items())}
    chosen: list[str] = []
    while len(chosen) < k:
        for g in sorted(pools):
            if pools[g] and len(chosen) < k:
                chosen.append(pools[g].pop())
    keep = set(chosen)
    return [e for e in entries if e["patient"] in keep]


def compose_training_set(sources: Sequence[Mapping], seed: int = 0) -> list[dict]:
    """Concatenate slices from several datalists with per-source patient limits and ratios.

    Args:
        sources: each ``{"datalist": path, "key": "training", "patients": k | None, "ratio": r | None}``.
            ``patients`` keeps k patients (needs ``patient`` fields); ``ratio`` draws r x (slices of the
            first source) slices from this one (with replacement if it has fewer).
        seed: seed of the patient draw and the ratio sampling.

    Returns:
        entries with absolute image / label paths and a ``source`` index.

    Raises:
        CMRDataError: a missing datalist or key, or more patients requested than present.
    """
    if not sources:
        raise ValueError("no training sources given")
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    first_count = None
    for i, src in enumerate(sources):
        path = Path(src["datalist"])
        data = load_json(path)
        key = src.get("key", "training")
        if key not in data:
            raise CMRDataError(path, f"no {key!r} list; keys are {sorted(data)}")
        entries = [_absolute(e, path.parent) for e in data[key] if "label" in e]
        if not entries:
            raise CMRDataError(path, f"no labelled entries under {key!r}")
        if src.get("patients") is not None:
            entries = _pick_patients(entries, int(src["patients"]), rng, path)
        if src.get("ratio") is not None:
            if first_count is None:
                raise ValueError("ratio needs an earlier source to be relative to")
            n = int(round(float(src["ratio"]) * first_count))
            idx = rng.choice(len(entries), n, replace=n > len(entries))
            entries = [entries[j] for j in idx]
        if first_count is None:
            first_count = len(entries)
        out += [{**e, "source": i} for e in entries]
    return out


def evaluation_entries(datalist: str | Path, key: str) -> list[dict]:
    """A datalist section for evaluation, absolute paths, without null fields (a cohort without groups has
    ``group: null``, which a DataLoader cannot collate)."""
    path = Path(datalist)
    data = load_json(path)
    if key not in data:
        raise CMRDataError(path, f"no {key!r} section; sections are {sorted(data)}")
    if not data[key]:
        raise CMRDataError(path, f"section {key!r} is empty: nothing to evaluate")
    return [{k: v for k, v in _absolute(e, path.parent).items() if v is not None} for e in data[key]]


@torch.no_grad()
def predict_slices(network: torch.nn.Module, loader, device) -> list[dict]:
    """Run a segmenter over a loader of {image, label, patient, phase, slice, spacing} batches; argmax labels."""
    network.eval()
    results = []
    for batch in loader:
        pred = network(batch["image"].to(device)).argmax(1).cpu().numpy().astype(np.uint8)
        label = batch["label"][:, 0].cpu().numpy().astype(np.uint8)
        for i in range(len(pred)):
            results.append({
                "patient": batch["patient"][i], "phase": batch["phase"][i], "group": batch["group"][i] if "group" in batch else None,
                "slice": int(batch["slice"][i]), "spacing": [float(s[i]) for s in batch["spacing"]],
                "pred": pred[i], "label": label[i], "image": batch["image"][i, 0].cpu().numpy(),
            })
    return results


def evaluate_segmenter(network: torch.nn.Module, loader, device, out_dir: str | Path, seed: int = 0) -> dict:
    """Score a segmenter on real patient volumes; write ``metrics.json`` and ``predictions.png``.

    Returns:
        the summary (mean, sd, bootstrap 95 % interval per score).
    """
    from cmrsynth.data.atomic import write_json_atomic
    from cmrsynth.metrics.utility import evaluate_patients
    from cmrsynth.report import save_overlay_grid

    out_dir = Path(out_dir)
    slices = predict_slices(network, loader, device)
    if not slices:
        raise ValueError("no slices to evaluate")
    result = evaluate_patients(slices, seed=seed)
    write_json_atomic(out_dir / "metrics.json", {**result, "patients": len(result["per_patient"]), "slices": len(slices)})
    shown = slices[:: max(1, len(slices) // 8)][:8]
    save_overlay_grid([s["image"] for s in shown] * 2, [s["label"] for s in shown] + [s["pred"] for s in shown],
                      out_dir / "predictions.png",
                      [f"truth {s['patient']} {s['phase']}" for s in shown] + ["prediction"] * len(shown), ncols=len(shown))
    return result["summary"]


def headline(summary: Mapping[str, Mapping]) -> dict[str, float]:
    """Mean Dice per phase and structure from an evaluation summary, rounded, for a one-line report."""
    return {k: round(v["mean"], 4) for k, v in summary.items() if "/dice_" in k}


def write_composed_datalist(sources: Sequence[Mapping], path: str | Path, seed: int = 0) -> str:
    """Compose a training set and write it as a datalist (``training`` key); return the path (for configs)."""
    from cmrsynth.data.atomic import write_json_atomic

    entries = compose_training_set(sources, seed)
    write_json_atomic(path, {"training": entries, "sources": [dict(s) for s in sources], "seed": seed})
    return str(path)


def load_metrics(path: str | Path) -> dict:
    """Read a metrics.json written by evaluate_segmenter."""
    return json.loads(Path(path).read_text())


def _mean_dice(network: torch.nn.Module, images: np.ndarray, masks: np.ndarray, device, batch_size: int = 64) -> dict:
    """Mean Dice per structure of the segmenter's predictions on images against masks (NaN slices skipped)."""
    from cmrsynth.metrics.fidelity import dice_per_structure

    network.eval()
    scores = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.as_tensor(images[i:i + batch_size], dtype=torch.float32)[:, None].to(device)
            pred = network(x).argmax(1).cpu().numpy()
            scores += [dice_per_structure(p, m) for p, m in zip(pred, masks[i:i + batch_size])]
    return {k: float(np.nanmean([s[k] for s in scores])) for k in scores[0]}


def score_generator(
    network: torch.nn.Module,
    real_images: np.ndarray,
    real_masks: np.ndarray,
    synthetic_images: np.ndarray,
    synthetic_masks: np.ndarray,
    paired_real: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    inception: str | None = None,
    seed: int = 0,
) -> dict:
    """Fidelity of a generator's images, scored with a segmenter trained on real data.

    - ``fd_seg`` / ``kid_seg``: Fréchet distance and KID on the segmenter's pooled bottleneck features (not
      Inception FID; comparable only between runs scored with the same segmenter); ``fid_inception`` too when
      ``inception`` names a local TorchScript file.
    - ``mask_faithfulness``: the segmenter's Dice on synthetic images against their conditioning masks, beside
      ``real_dice`` (its Dice on the real images: the ceiling).
    - ``diversity``: mean pairwise MS-SSIM within the synthetic set and within the real set (collapse check).
    - ``paired``: SSIM, MS-SSIM, PSNR against ``paired_real`` (real images of the same masks), if given.

    Images are (N, H, W) in [-1, 1]; masks (N, H, W) canonical labels.
    """
    from cmrsynth.metrics.fidelity import diversity, frechet_distance, kernel_distance, paired_metrics, pooled_features

    real_f = pooled_features(network, real_images, device=device)
    syn_f = pooled_features(network, synthetic_images, device=device)
    kid, kid_sd = kernel_distance(real_f, syn_f, seed=seed)
    result = {
        "n_real": len(real_images), "n_synthetic": len(synthetic_images),
        "fd_seg": frechet_distance(real_f, syn_f), "kid_seg": kid, "kid_seg_sd": kid_sd,
        "mask_faithfulness": _mean_dice(network, synthetic_images, synthetic_masks, device),
        "real_dice": _mean_dice(network, real_images, real_masks, device),
        "diversity": {"synthetic": diversity(synthetic_images, seed=seed), "real": diversity(real_images, seed=seed)},
    }
    if inception:
        from cmrsynth.metrics.fidelity import torchscript_features

        result["fid_inception"] = frechet_distance(torchscript_features(inception, real_images),
                                                   torchscript_features(inception, synthetic_images))
    if paired_real is not None:
        result["paired"] = paired_metrics(synthetic_images, paired_real)
    return result


def score_generator_files(
    network: torch.nn.Module,
    real_datalist: str | Path,
    synthetic_datalist: str | Path,
    out_dir: str | Path,
    real_key: str = "test",
    synthetic_key: str = "training",
    device: str | torch.device = "cpu",
    inception: str | None = None,
    seed: int = 0,
) -> dict:
    """``score_generator`` on files; writes ``fidelity.json`` to ``out_dir``.

    Paired metrics are computed when the synthetic set was drawn from the same real datalist section (its
    private ``provenance.json`` links every synthetic image to the index of its source mask).
    """
    from cmrsynth.data.atomic import write_json_atomic
    from cmrsynth.data.datalist import load_section

    real = load_section(real_datalist, real_key)
    syn = load_section(synthetic_datalist, synthetic_key)
    if not real or not syn:
        raise CMRDataError(Path(real_datalist if not real else synthetic_datalist), "no slices to score")
    real_images, real_masks = np.stack([e["array"] for e in real]), np.stack([e["mask"] for e in real])
    syn_images, syn_masks = np.stack([e["array"] for e in syn]), np.stack([e["mask"] for e in syn])
    if real_images.shape[1:] != syn_images.shape[1:]:
        raise CMRDataError(Path(synthetic_datalist), f"slices are {syn_images.shape[1:]}, real ones {real_images.shape[1:]}")
    paired = _paired_real(Path(real_datalist), real_key, Path(synthetic_datalist), syn, real_images)
    result = score_generator(network, real_images, real_masks, syn_images, syn_masks, paired, device, inception, seed)
    result.update({"real_datalist": str(real_datalist), "real_key": real_key, "synthetic_datalist": str(synthetic_datalist),
                   "features": "real-trained segmenter bottleneck (pooled); not Inception"})
    write_json_atomic(Path(out_dir) / "fidelity.json", result)
    return result


def _paired_real(real_datalist: Path, real_key: str, synthetic_datalist: Path, syn: list[dict], real_images: np.ndarray):
    """Real images matching each synthetic image's source mask, or None when the set was not drawn from them."""
    real_json = real_datalist / "datalist.json" if real_datalist.is_dir() else real_datalist
    syn_json = synthetic_datalist / "datalist.json" if synthetic_datalist.is_dir() else synthetic_datalist
    prov_path = syn_json.parent / "provenance.json"
    if not prov_path.is_file():
        return None
    prov = json.loads(prov_path.read_text())
    links = [prov.get(e.get("synthetic_id"), {}) for e in syn]
    same = all(Path(p.get("mask_datalist", "")).resolve() == real_json.resolve() and p.get("mask_key") == real_key
               for p in links)
    return np.stack([real_images[p["index"]] for p in links]) if same else None

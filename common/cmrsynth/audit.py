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
"""The privacy_audit stage: membership inference against a mask-conditioned image generator, nearest-neighbour
leakage of its synthetic set, and the release gate that removes near copies.

Roles come from the prepared datalist: members are the generator's training patients (``training``), non-members
the held-out patients of the same cohort (``validation`` and ``test``). Before any attack, non-members that are
near-copies of members (one person under two ids) are found and left out (``cmrsynth.audit_guard``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cmrsynth.audit_guard import check_line, check_non_members
from cmrsynth.data.atomic import write_json_atomic
from cmrsynth.data.datalist import load_json, load_section
from cmrsynth.errors import CMRDataError
from cmrsynth.generative import BoundModel, Generator
from cmrsynth.labels import NUM_CLASSES
from cmrsynth.metrics import privacy

NON_MEMBER_SECTIONS = ("validation", "test")


def audit_slices(datalist: str | Path, per_patient: int | None = 6, seed: int = 0, load: bool = True) -> list[dict]:
    """Slices of members and non-members with their role; at most ``per_patient`` evenly spaced slices each.

    With ``load=False`` the datalist entries are returned as they are (paths, no arrays)."""
    path = Path(datalist)
    path = path / "datalist.json" if path.is_dir() else path
    read = load_section if load else (lambda p, section: [dict(e) for e in load_json(p)[section]])
    entries = [{**e, "role": "member", "section": "training"} for e in read(path, "training")]
    for section in NON_MEMBER_SECTIONS:
        entries += [{**e, "role": "non_member", "section": section} for e in read(path, section)]
    if any("patient" not in e for e in entries):
        raise CMRDataError(path, "entries need a 'patient' field to audit per patient")
    by_patient: dict[str, list[dict]] = {}
    for e in entries:
        by_patient.setdefault(e["patient"], []).append(e)
    picked = []
    for slices in by_patient.values():
        idx = np.linspace(0, len(slices) - 1, min(per_patient or len(slices), len(slices))).round().astype(int)
        picked += [slices[i] for i in sorted(set(idx))]
    return picked


def guarded_slices(datalist: str | Path, per_patient: int | None = 6, seed: int = 0) -> tuple[list[dict], list[dict], dict]:
    """The audited slices less the non-member patients that are near-copies of members (``check_non_members``
    against every training slice).

    Returns:
        (audited slices kept, the training section's slices, the check with ``excluded``: the patients left out).
    """
    audited = audit_slices(datalist, per_patient, seed)
    train = load_section(datalist, "training")
    check = check_non_members(audited, train)
    excluded = {f["patient"] for f in check["flagged"]}
    return [e for e in audited if e["patient"] not in excluded], train, {**check, "excluded": sorted(excluded)}


def draws_masks(generator: Generator) -> bool:
    """Whether the generator's samples are masks (the mask generator: one-hot label maps, conditioned on class
    only) rather than images conditioned on a mask."""
    return generator.data_channels == NUM_CLASSES


def _attack_inputs(generator: Generator, entries: Sequence[dict], device) -> tuple[torch.Tensor, BoundModel]:
    """(clean data x0, the generator bound to each slice's conditions): for an image generator the slice's image
    and its real mask and class; for the mask generator the real mask itself (one-hot in [-1, 1], as it trains)
    and its class."""
    masks = torch.from_numpy(np.stack([e["mask"] for e in entries]).astype(np.int64))
    onehot = F.one_hot(masks, NUM_CLASSES).permute(0, 3, 1, 2).float().to(device)
    classes = generator.classes.labels(list(entries), device)
    if draws_masks(generator):
        return onehot * 2.0 - 1.0, generator.bind(None, classes)
    x0 = torch.as_tensor(np.stack([e["array"] for e in entries]), dtype=torch.float32)[:, None].to(device)
    return x0, generator.bind(onehot, classes)


def level_name(level: float) -> str:
    """Attack names state the noise level in thousandths (t500: half-way to pure noise), as DDPM timesteps of 1000."""
    return f"t{round(1000 * level)}"


def attack_scores(generator: Generator, slices: Sequence[dict], levels: Sequence[float] = (0.05, 0.1, 0.2, 0.5),
                  batch_size: int = 32, device="cpu", seed: int = 0) -> dict:
    """Per-slice scores of every attack (higher = more likely a member), conditioned on each slice's real mask
    (image generators) or class (the mask generator, whose data is the real mask).

    Loss attacks run at every noise level, PIA at the first two; SecMI at level 0.1 (steps of 0.01) and the
    mid-band attack at level 0.1, for any generator of the contract."""
    generator = generator.to(device).eval()
    attacks = {f"loss_{level_name(s)}": (lambda m, x, s=s: privacy.loss_scores(m, x, s, seed=seed)) for s in levels}
    attacks.update({f"pia_{level_name(s)}": (lambda m, x, s=s: privacy.pia_scores(m, x, s)) for s in levels[:2]})
    attacks["secmi_t100"] = lambda m, x: privacy.secmi_scores(m, x, level=0.1, interval=0.01)
    attacks["midband_t100"] = lambda m, x: privacy.midband_scores(m, x, 0.1, seed=seed)
    scores = {name: [] for name in attacks}
    for start in range(0, len(slices), batch_size):
        chunk = slices[start:start + batch_size]
        x0, model = _attack_inputs(generator, chunk, device)
        for name, attack in attacks.items():
            scores[name].extend(attack(model, x0).tolist())
    return scores


def with_calibrated(scores: dict, slices: Sequence[dict], seed: int = 0) -> dict:
    """The attack scores plus, for each, its difficulty-calibrated version ``<attack>_cal``
    (``privacy.calibrated_scores``: the quantile-regression attack, calibrated on the non-member slices with
    cross-fitting over non-member patients, so no slice is calibrated on itself)."""
    masks = np.stack([e["mask"] for e in slices])
    images = np.stack([e["array"] for e in slices]) if all("array" in e for e in slices) else None
    descriptors = privacy.slice_descriptors(masks, images)
    reference = [e["role"] == "non_member" for e in slices]
    patients = [e["patient"] for e in slices]
    calibrated = {f"{name}_cal": privacy.calibrated_scores(v, descriptors, reference, patients, seed=seed).tolist()
                  for name, v in scores.items()}
    return {**scores, **calibrated}


def membership_table(scores: dict, slices: Sequence[dict], seed: int = 0, level: str = "patient") -> dict:
    """Attack metrics per attack from per-slice scores: per patient (mean over its slices) or per slice (bootstrap
    and cross-fitting still by patient)."""
    roles = [e["role"] for e in slices]
    patients = [e["patient"] for e in slices]
    role_of = dict(zip(patients, roles))
    keys = [f"{p}#{i}" for i, p in enumerate(patients)]  # slice level: one key per slice, grouped by patient
    table = {}
    for name, values in scores.items():
        if level == "patient":
            pp = privacy.per_patient(values, patients)
            split = {r: {p: v for p, v in pp.items() if role_of[p] == r} for r in ("member", "non_member")}
            table[name] = privacy.attack_metrics(split["member"], split["non_member"], seed=seed)
        else:
            split = {r: {k: v for k, v, rr in zip(keys, values, roles) if rr == r} for r in ("member", "non_member")}
            table[name] = privacy.attack_metrics(split["member"], split["non_member"], seed=seed, groups=dict(zip(keys, patients)))
    return table


def reconstruction_attack(mask_datalist: str | Path, mask_key: str, synthetic_datalist: str | Path, seed: int = 0) -> dict:
    """Black-box reconstruction attack on a mask-conditioned generator: does it redraw a patient's own image
    when given that patient's mask?

    ``synthetic_datalist`` holds images the generator drew (its inference config) from the ``mask_key`` slices of
    ``mask_datalist``, whose entries carry ``patient`` and ``role`` (``audit_slices(..., load=False)``); the private
    ``provenance.json`` beside it links each image to its mask. Scores per slice: the negative RMS distance and
    the SSIM between the drawn image and the real image of that mask, averaged per patient; higher = member.
    Anyone who can sample the model with chosen masks can run it (no weights needed).
    """
    from monai.metrics import SSIMMetric

    real = load_section(mask_datalist, mask_key)
    syn_path = Path(synthetic_datalist)
    syn = load_section(syn_path, "training")
    provenance = load_json(syn_path.parent / "provenance.json")
    source = [real[provenance[e["synthetic_id"]]["index"]] for e in syn]
    drawn, truth = (torch.as_tensor(np.stack([e["array"] for e in es]), dtype=torch.float32)[:, None] for es in (syn, source))
    scores = {"neg_rms": (-((drawn - truth) ** 2).mean((1, 2, 3)).sqrt()).tolist(),
              "ssim": SSIMMetric(spatial_dims=2, data_range=2.0)(drawn, truth).flatten().tolist()}  # images in [-1, 1]
    table = membership_table(scores, source, seed)
    roles = np.array([r["role"] for r in source])
    medians = {name: {role: float(np.median(np.array(v)[roles == role])) for role in ("member", "non_member")}
               for name, v in scores.items()}
    return {"membership": table, "median_per_slice": medians, "slices": len(syn)}


def _reconstruction(generator: Generator, real_datalist: str | Path, out_dir: Path, per_patient: int | None,
                    batch_size: int, seed: int, device, exclude: frozenset[str] = frozenset()) -> dict:
    """Draw an image from every audited slice's own mask with the generator's own sampler (patients in ``exclude``
    left out); run the reconstruction attack."""
    from cmrsynth.generate import generate_images

    real = Path(real_datalist)
    base = (real if real.is_dir() else real.parent).absolute()
    chosen = [{**e, **{k: str(base / e[k]) for k in ("image", "label") if k in e}}  # absolute: this list lives elsewhere
              for e in audit_slices(real_datalist, per_patient, seed, load=False) if e["patient"] not in exclude]
    masks = out_dir / "reconstruction_masks.json"
    write_json_atomic(masks, {"audit": chosen})
    drawn = out_dir / "reconstruction"
    summary = generate_images(generator, masks, drawn, "audit", batch_size=batch_size, seed=seed, device=device, overwrite=True)
    return {"sampler": f"{summary['sampler']}, {summary['nfe']} NFE", **reconstruction_attack(masks, "audit", drawn / "datalist.json", seed)}


def leakage(synthetic_images: np.ndarray, train_images: np.ndarray, holdout_images: np.ndarray,
            synthetic_masks: np.ndarray | None = None, train_masks: np.ndarray | None = None,
            holdout_masks: np.ndarray | None = None, quantile: float = 0.01, encoder=None) -> dict:
    """Nearest-neighbour leakage of a synthetic set in pixel space, in the feature space of ``encoder`` (images ->
    (N, C) features, e.g. ``load_encoder``) when given, and for masks (Dice to the nearest training mask)."""
    syn = privacy.nearest_distances(synthetic_images, train_images)
    hold = privacy.nearest_distances(holdout_images, train_images)
    out = {"pixel": privacy.leakage_report(syn, hold, quantile), "synthetic_to_train": syn[:, 0].tolist()}
    if encoder is not None:
        out["feature"] = feature_leakage(encoder, synthetic_images, train_images, holdout_images, quantile)
    if synthetic_masks is not None and train_masks is not None:
        syn_dice = privacy.mask_dice_nearest(synthetic_masks, train_masks)
        out["mask_dice_to_nearest_train"] = {"median": float(np.median(syn_dice)), "exact_copies": int((syn_dice >= 0.999).sum())}
        if holdout_masks is not None:
            hold_dice = privacy.mask_dice_nearest(holdout_masks, train_masks)
            out["mask_dice_to_nearest_train"]["holdout_median"] = float(np.median(hold_dice))
    return out


def _standardised(encoder, train_images: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Encoder features of the training images and of each other set, standardised on the training features (so
    no single channel dominates a distance)."""
    f_train = np.asarray(encoder(train_images))
    mean, sd = f_train.mean(0), f_train.std(0) + 1e-8
    return [(f - mean) / sd for f in (f_train, *(np.asarray(encoder(x)) for x in others))]


def _encode_once(encoder):
    """``encoder`` remembering its features per image array: the audit encodes the same sets for the leakage report
    and for the planted-copy check."""
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def encode(images: np.ndarray) -> np.ndarray:
        if id(images) not in seen:
            seen[id(images)] = (images, np.asarray(encoder(images)))  # holding the array keeps its id from being reused
        return seen[id(images)][1]

    return encode


def feature_leakage(encoder, synthetic_images: np.ndarray, train_images: np.ndarray, holdout_images: np.ndarray,
                    quantile: float = 0.01) -> dict:
    """Leakage report in an encoder's feature space, each feature standardised on the training images."""
    f_train, f_syn, f_hold = _standardised(encoder, train_images, synthetic_images, holdout_images)
    return privacy.leakage_report(privacy.nearest_distances(f_syn, f_train), privacy.nearest_distances(f_hold, f_train), quantile)


def planted_copy_check(synthetic_images: np.ndarray, train_images: np.ndarray, holdout_images: np.ndarray, n: int = 20,
                       noise: Sequence[float] = (0.1, 0.3, 0.6), quantile: float = 0.01, encoder=None, seed: int = 0) -> dict:
    """Does the release gate catch training images slipped into a synthetic set, and spare the honest ones?

    Plants ``n`` training images as they are and, for each level in ``noise``, re-noised (Gaussian noise of that
    fraction of the training images' sd), and applies the holdout-calibrated threshold, in pixel space and (with
    an ``encoder``) in its feature space.

    Returns:
        per space: the threshold, the share of the plants removed per kind (sensitivity) and the share of the
        honest synthetic images kept (specificity).
    """
    rng = np.random.default_rng(seed)
    exact = train_images[rng.choice(len(train_images), min(n, len(train_images)), replace=False)]
    plants = {"exact": exact} | {f"noise_{level:g}": exact + rng.normal(0.0, level * float(train_images.std()), exact.shape)
                                 for level in noise}
    sets = [train_images, holdout_images, synthetic_images, *plants.values()]
    spaces = {"pixel": sets} | ({"feature": _standardised(encoder, *sets)} if encoder is not None else {})
    out = {"planted": len(exact), "noise_sd_fractions": list(noise)}
    for space, (train, hold, syn, *planted) in spaces.items():
        threshold = privacy.copy_threshold(privacy.nearest_distances(hold, train)[:, 0], quantile)
        kept = lambda x: privacy.release_gate(privacy.nearest_distances(x, train), threshold)  # noqa: E731
        out[space] = {"threshold": threshold, "specificity": float(kept(syn).mean()),
                      "sensitivity": {kind: float((~kept(x)).mean()) for kind, x in zip(plants, planted)}}
    return out


def load_encoder(bundle: str | Path, run_root: str | Path, device="cpu", layer: str = "bottleneck",
                 checkpoint: str = "model.pt"):
    """An images -> features function from a trained segmenter bundle (seg_utility trained on real data): its
    ``layer`` output averaged over space, the encoder the fidelity metrics use too."""
    from monai.bundle import ConfigParser

    from cmrsynth.metrics.fidelity import pooled_features

    ckpt = Path(run_root) / "models" / checkpoint
    if not ckpt.is_file():
        raise CMRDataError(ckpt, "feature encoder checkpoint not found (train seg_utility on real data first)")
    parser = ConfigParser()
    parser.read_config(str(Path(bundle) / "configs" / "common.yaml"))
    parser.update({"bundle_root": str(run_root), "device": f"$torch.device('{device}')"})
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(ckpt, map_location=device, weights_only=True))
    return lambda images: pooled_features(network, images, layer, device=device)


def drawn_from_member_masks(synthetic_datalist: Path, entries: Sequence[dict]) -> np.ndarray:
    """For each synthetic entry, whether it was drawn from a training patient's real mask (``role: member`` in the
    source datalist its private ``provenance.json`` points to); all False when there is no provenance."""
    provenance_path = Path(synthetic_datalist).parent / "provenance.json"
    if not provenance_path.is_file():
        return np.zeros(len(entries), bool)
    provenance, sources = load_json(provenance_path), {}
    flags = []
    for e in entries:
        link = provenance.get(e.get("synthetic_id"), {})
        if "mask_datalist" not in link:
            flags.append(False)
            continue
        source = sources.setdefault((link["mask_datalist"], link["mask_key"]),
                                    load_json(Path(link["mask_datalist"])).get(link["mask_key"], []))
        flags.append(link["index"] < len(source) and source[link["index"]].get("role") == "member")
    return np.array(flags, bool)


def _nearest_mask_dice(synthetic: Sequence[dict], train: Sequence[dict], holdout: Sequence[dict]):
    """Dice of each synthetic mask and of each held-out mask to its nearest training mask; synthetic entries without
    a mask get Dice 0 (never removed on this ground)."""
    stack = lambda es: np.stack([e["mask"] for e in es])  # noqa: E731
    hold = privacy.mask_dice_nearest(stack(holdout), stack(train))
    dice = np.zeros(len(synthetic))
    with_mask = [i for i, e in enumerate(synthetic) if "mask" in e]
    if with_mask:
        dice[with_mask] = privacy.mask_dice_nearest(stack([synthetic[i] for i in with_mask]), stack(train))
    return dice, hold


def mask_copies(synthetic: Sequence[dict], train: Sequence[dict], holdout: Sequence[dict], quantile: float):
    """Dice of each synthetic mask to its nearest training mask, and the (1 - quantile) quantile of the same for
    held-out masks; synthetic entries without a mask get Dice 0 (never removed on this ground)."""
    dice, hold = _nearest_mask_dice(synthetic, train, holdout)
    return dice, float(np.quantile(hold, 1.0 - quantile))


def mask_leakage(synthetic: Sequence[dict], train: Sequence[dict], holdout: Sequence[dict], quantile: float = 0.01) -> dict:
    """A synthetic mask set against the training masks: Dice of each to its nearest training mask beside the same
    for held-out masks, and the near copies the release gate drops (Dice above the held-out 1 - ``quantile``
    quantile, as ``mask_copies``)."""
    dice, hold = _nearest_mask_dice(synthetic, train, holdout)
    threshold = float(np.quantile(hold, 1.0 - quantile))
    return {"synthetic": len(dice), "median": float(np.median(dice)), "holdout_median": float(np.median(hold)),
            "exact_copies": int((dice >= 0.999).sum()), "threshold": threshold, "threshold_quantile": quantile,
            "near_copies": int((dice > threshold).sum()), "near_copy_rate": float((dice > threshold).mean())}


def release(synthetic_datalist: str | Path, real_datalist: str | Path, out_path: str | Path, quantile: float = 0.01,
            key: str = "training") -> dict:
    """The release gate: drop synthetic slices closer (pixel RMS) to a training slice than the holdout-calibrated
    threshold, slices whose mask is closer to a training mask than held-out masks are (same quantile), and slices
    drawn from a training patient's own mask (found through ``provenance.json``); write the filtered datalist (same
    folder layout) and a record of what was removed and why. Held-out patients that are near-copies of training
    patients (``check_non_members``) are left out of the calibration and named in the record."""
    syn_path = Path(synthetic_datalist)
    syn_json = syn_path / "datalist.json" if syn_path.is_dir() else syn_path
    syn = load_section(syn_json, key)
    train = load_section(real_datalist, "training")
    holdout = [{**e, "role": "non_member"} for s in NON_MEMBER_SECTIONS for e in load_section(real_datalist, s)]
    copies = sorted(f["patient"] for f in check_non_members(holdout, train)["flagged"])  # they would pull the threshold to 0
    holdout = [e for e in holdout if e["patient"] not in copies]
    if not syn:
        raise CMRDataError(syn_json, f"no synthetic slices under {key!r}")
    train_images = np.stack([e["array"] for e in train])
    d_syn = privacy.nearest_distances(np.stack([e["array"] for e in syn]), train_images)
    d_hold = privacy.nearest_distances(np.stack([e["array"] for e in holdout]), train_images)
    threshold = privacy.copy_threshold(d_hold[:, 0], quantile)
    near = ~privacy.release_gate(d_syn, threshold)
    member_mask = drawn_from_member_masks(syn_json, syn)
    mask_dice, mask_threshold = mask_copies(syn, train, holdout, quantile)
    near_mask = mask_dice > mask_threshold
    keep = ~near & ~member_mask & ~near_mask
    data = load_json(syn_json)
    data[key] = [e for e, k in zip(data[key], keep) if k]
    why_near = f"closer to a training slice than {threshold:.4f} (the {quantile:.0%} quantile of holdout-to-train distances)"
    why_member = ("drawn from a training patient's own mask: the reconstruction attack shows such images carry that "
                  "patient's appearance")
    why_mask = (f"its mask is closer to a training mask than {1 - quantile:.0%} of held-out masks are (Dice above "
                f"{mask_threshold:.3f}); the generator may draw that patient's appearance on it")
    removed = [{"synthetic_id": e.get("synthetic_id", e.get("image")), "distance_to_nearest_train": float(d[0]),
                "mask_dice_to_nearest_train": float(md),
                "reason": "; ".join(r for r, hit in ((why_near, n), (why_member, m), (why_mask, nm)) if hit)}
               for e, d, md, n, m, nm, k in zip(syn, d_syn, mask_dice, near, member_mask, near_mask, keep) if not k]
    record = {"threshold": threshold, "mask_dice_threshold": mask_threshold, "quantile": quantile, "kept": int(keep.sum()),
              "removed": removed,
              "synthetic_datalist": str(syn_json), "holdout_patients": len({e.get("patient") for e in holdout}),
              "holdout_near_copies_left_out": copies}
    out_path = Path(out_path)
    if out_path.parent.resolve() != syn_json.parent.resolve():
        raise ValueError(f"{out_path}: write the filtered datalist beside {syn_json.name} so its relative paths stay valid")
    write_json_atomic(out_path, data)
    write_json_atomic(out_path.with_name(out_path.stem + "_release_record.json"), record)
    return record


def _nearest_figure(synthetic: np.ndarray, train: np.ndarray, distances: np.ndarray, png: Path, n: int = 6) -> None:
    """The n synthetic images closest to a training image, each above its nearest training image."""
    from cmrsynth.report import save_overlay_grid

    order = np.argsort(distances)[:n]
    flat_train = torch.as_tensor(train, dtype=torch.float32).flatten(1)
    nearest = [int(torch.cdist(torch.as_tensor(synthetic[i], dtype=torch.float32).flatten()[None], flat_train).argmin()) for i in order]
    save_overlay_grid([synthetic[i] for i in order] + [train[j] for j in nearest], None, png,
                      [f"synthetic d={distances[i]:.3f}" for i in order] + ["nearest training slice"] * len(order), ncols=len(order))


def _leakage_lines(space: str, p: dict) -> list[str]:
    return ["", f"## Nearest-neighbour leakage ({space})", "",
            f"- synthetic→train median {p['synthetic_median']:.4f}; holdout→train median {p['holdout_median']:.4f}",
            f"- near copies (closer than the {p['threshold_quantile']:.0%} quantile of holdout→train, {p['threshold']:.4f}): "
            f"{p['near_copies']} of {p['synthetic']} ({p['near_copy_rate']:.1%})",
            f"- NNDR median: synthetic {p['nndr_median_synthetic']:.3f}, holdout {p['nndr_median_holdout']:.3f}"]


def _finding(kind: str, table: dict) -> str:
    """One sentence: which attacks separate members beyond chance (95 % interval of the AUC excluding 0.5; below
    it, the attack's signal runs the other way, which still tells members apart)."""
    caught = {name: m["auc"] for name, m in table.items() if not m["auc"]["ci95"][0] <= 0.5 <= m["auc"]["ci95"][1]}
    if not caught:
        return f"- {kind}: no attack tells members from non-members beyond chance (every AUC interval includes 0.5)."
    listed = ", ".join(f"{n} AUC {a['value']:.2f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}]" + (" (inverted)" if a["value"] < 0.5 else "")
                       for n, a in caught.items())
    return f"- {kind}: **members can be told apart** by {listed}."


def strongest(table: dict) -> tuple[str, dict]:
    """The attack of a membership table with the highest ROC AUC (picked after the fact: optimistic for the
    attacker)."""
    return max(table.items(), key=lambda kv: kv[1]["auc"]["value"])


def summary_lines(result: dict) -> list[str]:
    """The report's verdict in plain sentences."""
    lines = ["## Summary", "", _finding("Membership (white-box, model weights, per patient)", result["membership"])]
    if "membership_slices" in result:
        name, m = strongest(result["membership_slices"])
        lines.append(f"- Per slice ({m['member_scores']} member and {m['non_member_scores']} non-member slices), the strongest "
                     f"attack is {name}: AUC {m['auc']['value']:.2f} [{m['auc']['ci95'][0]:.2f}, {m['auc']['ci95'][1]:.2f}], "
                     f"TPR {m['tpr_at_1pct_fpr']['value']:.1%} at 1 % FPR and {m['tpr_at_0.1pct_fpr']['value']:.1%} at 0.1 % FPR "
                     f"(a random guess: 1 % and 0.1 %).")
    if "test_non_members_only" in result:
        t = result["test_non_members_only"]
        (pn, pm), (sn, sm) = strongest(t["membership"]), strongest(t["membership_slices"])
        lines.append(f"- With the test patients alone as non-members ({pm['non_members']}; the validation patients chose the "
                     f"checkpoint): strongest per patient {pn} AUC {pm['auc']['value']:.2f} [{pm['auc']['ci95'][0]:.2f}, "
                     f"{pm['auc']['ci95'][1]:.2f}], per slice {sn} AUC {sm['auc']['value']:.2f}, TPR "
                     f"{sm['tpr_at_1pct_fpr']['value']:.1%} at 1 % FPR.")
    if "reconstruction" in result:
        lines.append(_finding("Reconstruction (black-box, images drawn from the patients' own masks)",
                              result["reconstruction"]["membership"]))
    leak = result.get("leakage", {})
    if "pixel" in leak:
        p = leak["pixel"]
        lines.append(f"- Synthetic set: {p['near_copies']} of {p['synthetic']} images closer to a training image than "
                     f"{p['threshold_quantile']:.0%} of held-out real images are (a rate of {p['near_copy_rate']:.1%}; about "
                     f"{p['threshold_quantile']:.0%} is expected by chance); `release.yaml` removes them.")
    if "masks" in leak:
        p = leak["masks"]
        lines.append(f"- Synthetic masks: {p['near_copies']} of {p['synthetic']} closer to a training mask than "
                     f"{1 - p['threshold_quantile']:.0%} of held-out masks are (Dice above {p['threshold']:.3f}); "
                     "`release.yaml` removes them.")
    return lines + [""]


def _membership_lines(title: str, table: dict, note: str) -> list[str]:
    lines = [f"## {title}", "", note, "",
             "| attack | ROC AUC [95 % CI] | TPR at 0.1 % FPR | TPR at 1 % FPR | TPR at 10 % FPR | balanced accuracy (cross-fitted) [95 % CI] |",
             "|---|---|---|---|---|---|"]
    for name, m in table.items():
        ci = lambda k: f"{m[k]['value']:.2f} [{m[k]['ci95'][0]:.2f}, {m[k]['ci95'][1]:.2f}]"  # noqa: E731
        low = m.get("tpr_at_0.1pct_fpr", {"value": float("nan")})  # audits written before 0.4.0 lack it
        lines.append(f"| {name} | {ci('auc')} | {low['value']:.3f} | {m['tpr_at_1pct_fpr']['value']:.3f} | "
                     f"{m['tpr_at_10pct_fpr']['value']:.2f} | {ci('balanced_accuracy')} |")
    return lines


CALIBRATION_NOTE = ("`_cal`: the attack calibrated per slice (quantile-regression attack, no shadow generators): its score "
                    "minus what the generator scores on held-out slices of the same kind (structure sizes, boundary "
                    "length, intensity, texture), in units of their spread, fitted on non-member patients of other folds.")


def report_markdown(result: dict) -> str:
    """A plain report a data-protection officer can read."""
    check = [check_line(result["non_member_check"]), ""] if "non_member_check" in result else []
    data = "masks" if result.get("data") == "masks" else "slices"
    lines = [f"# Privacy audit: {result['generator']}", "", *check,
             f"Members (the generator's training patients): {result['members']}; non-members (held-out patients of the "
             f"same cohort): {result['non_members']}. Each attack scores up to {result['slices_per_patient']} real {data} "
             "per patient. Attack success of 0.5 balanced accuracy / 0.5 AUC means the attacker cannot tell members apart.", "",
             *summary_lines(result)]
    lines += _membership_lines("Membership inference (white-box), per patient", result["membership"],
                               "Scores averaged over each patient's slices. " + CALIBRATION_NOTE)
    if "membership_slices" in result:
        m = next(iter(result["membership_slices"].values()))
        lines += [""] + _membership_lines(
            "Membership inference (white-box), per slice", result["membership_slices"],
            f"{m['member_scores']} member and {m['non_member_scores']} non-member slices: an FPR below "
            f"1/{m['non_member_scores']} means no false positive at all. Intervals resample patients with all their slices.")
    leak = result.get("leakage", {})
    if "pixel" in leak:
        lines += _leakage_lines("pixel space, RMS distance", leak["pixel"])
        if "mask_dice_to_nearest_train" in leak:
            md = leak["mask_dice_to_nearest_train"]
            lines.append(f"- masks: median Dice to the nearest training mask {md['median']:.3f} (holdout "
                         f"{md.get('holdout_median', float('nan')):.3f}); exact copies {md['exact_copies']}")
        lines.append(f"- closest examples: `{leak.get('figure', '')}`")
        if "feature" in leak:
            lines += _leakage_lines("encoder-feature space, standardised features", leak["feature"])
    if "masks" in leak:
        md = leak["masks"]
        lines += ["", "## Nearest-training-mask leakage (Dice)", "",
                  f"- median Dice of a synthetic mask to its nearest training mask {md['median']:.3f}; held-out real masks "
                  f"{md['holdout_median']:.3f}",
                  f"- near copies (Dice above the held-out {1 - md['threshold_quantile']:.0%} quantile, {md['threshold']:.3f}): "
                  f"{md['near_copies']} of {md['synthetic']} ({md['near_copy_rate']:.1%}); exact copies {md['exact_copies']}"]
    if "reconstruction" in result:
        r = result["reconstruction"]
        sampler = r.get("sampler") or f"DDIM-{r['ddim_steps']}"  # audits written before the generator contract
        lines += ["", f"## Reconstruction attack (an image drawn from each audited slice's own mask, {sampler}, "
                  "compared with that slice's real image)", "",
                  "| score | ROC AUC [95 % CI] | balanced accuracy (cross-fitted) | median per slice, members / non-members |",
                  "|---|---|---|---|"]
        for name, m in r["membership"].items():
            med = r["median_per_slice"][name]
            lines.append(f"| {name} | {m['auc']['value']:.2f} [{m['auc']['ci95'][0]:.2f}, {m['auc']['ci95'][1]:.2f}] | "
                         f"{m['balanced_accuracy']['value']:.2f} | {med['member']:.3f} / {med['non_member']:.3f} |")
    if "planted_copy_check" in result:
        c = result["planted_copy_check"]
        kinds = list(c["pixel"]["sensitivity"])
        lines += ["", f"## Planted-copy check of the release gate ({c['planted']} training images slipped into the synthetic set, "
                  "as they are and with Gaussian noise of a fraction of their sd)", "",
                  "| space | " + " | ".join(f"removed: {k.replace('noise_', 'noise ')}" for k in kinds) + " | honest synthetic kept |",
                  "|---" * (len(kinds) + 2) + "|"]
        lines += [f"| {space} | " + " | ".join(f"{c[space]['sensitivity'][k]:.0%}" for k in kinds) + f" | {c[space]['specificity']:.1%} |"
                  for space in ("pixel", "feature") if space in c]
    return "\n".join(lines) + "\n"


def run_audit(generator: Generator, real_datalist: str | Path, out_dir: str | Path, synthetic_datalist: str | Path | None = None,
              synthetic_key: str = "training", per_patient: int | None = 6, levels: Sequence[float] = (0.05, 0.1, 0.2, 0.5),
              batch_size: int = 32, seed: int = 0, device="cpu", tracking_uri: str | None = None, encoder=None,
              reconstruction: bool = True) -> dict:
    """Audit one generator (``cmrsynth.generative.load_generator``): membership table and (with a synthetic set)
    leakage, in pixel space and, with an ``encoder`` (``load_encoder``), in its feature space; with
    ``reconstruction``, the reconstruction attack (images drawn with the generator's own sampler from the audited
    slices' own masks). Writes JSON, markdown and PNGs."""
    from cmrsynth.tracking import tracked_run

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slices, train, check = guarded_slices(real_datalist, per_patient, seed)
    excluded = frozenset(check["excluded"])
    scores = with_calibrated(attack_scores(generator, slices, levels, batch_size, device, seed), slices, seed)
    result = {"generator": generator.name, "checkpoint": generator.checkpoint, "real_datalist": str(real_datalist),
              "data": "masks" if draws_masks(generator) else "images", "non_member_check": check,
              "members": len({e["patient"] for e in slices if e["role"] == "member"}),
              "non_members": len({e["patient"] for e in slices if e["role"] == "non_member"}),
              "slices_per_patient": per_patient, "membership": membership_table(scores, slices, seed),
              "membership_slices": membership_table(scores, slices, seed, "slice")}
    test_only = [i for i, e in enumerate(slices) if e["section"] in ("training", "test")]
    if len({slices[i]["patient"] for i in test_only if slices[i]["role"] == "non_member"}) >= 2:
        # best_ema.pt is chosen on the validation patients' loss, which pulls them towards members: the same attacks
        # with the test patients alone as non-members show whether that choice flatters the audit
        kept = [slices[i] for i in test_only]
        kept_scores = {name: [v[i] for i in test_only] for name, v in scores.items()}
        result["test_non_members_only"] = {"membership": membership_table(kept_scores, kept, seed),
                                           "membership_slices": membership_table(kept_scores, kept, seed, "slice")}
    if synthetic_datalist:
        syn = load_section(synthetic_datalist, synthetic_key)
        hold = [e for s in NON_MEMBER_SECTIONS for e in load_section(real_datalist, s) if e["patient"] not in excluded]
    if synthetic_datalist and draws_masks(generator):
        result["leakage"] = {"masks": mask_leakage(syn, train, hold)}
    elif synthetic_datalist:
        stack = lambda es, k: np.stack([e[k] for e in es])  # noqa: E731
        images = [stack(es, "array") for es in (syn, train, hold)]
        encoder = _encode_once(encoder) if encoder is not None else None
        result["leakage"] = leakage(*images, stack(syn, "mask"), stack(train, "mask"), stack(hold, "mask"), encoder=encoder)
        result["planted_copy_check"] = planted_copy_check(*images, encoder=encoder, seed=seed)
        png = out_dir / "closest_synthetic_vs_train.png"
        _nearest_figure(images[0], images[1], np.array(result["leakage"]["synthetic_to_train"]), png)
        result["leakage"]["figure"] = png.name
    reconstruction = reconstruction and not draws_masks(generator)  # a class-conditioned draw names no patient
    if reconstruction:
        result["reconstruction"] = _reconstruction(generator, real_datalist, out_dir, per_patient, batch_size, seed, device,
                                                   excluded)
    write_json_atomic(out_dir / "audit.json", result)
    (out_dir / "audit.md").write_text(report_markdown(result))
    with tracked_run(out_dir, "privacy_audit", generator.name, {"per_patient": per_patient, "noise_levels": list(levels)},
                     tracking_uri) as run:
        run.log_metrics({f"{a}_auc": m["auc"]["value"] for a, m in result["membership"].items()})
        run.log_metrics({f"{a}_slice_{k}": m[k]["value"] for a, m in result["membership_slices"].items()
                         for k in ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")})
        run.log_metrics({"non_member_near_copies": len(check["excluded"])})
        if "reconstruction" in result:
            run.log_metrics({f"reconstruction_{a}_auc": m["auc"]["value"] for a, m in result["reconstruction"]["membership"].items()})
        if "leakage" in result:
            run.log_metrics({f"near_copy_rate_{space}": result["leakage"][space]["near_copy_rate"]
                             for space in ("pixel", "feature", "masks") if space in result["leakage"]})
        run.log_artifact(out_dir / "audit.json")
        run.log_artifact(out_dir / "audit.md")
    return result

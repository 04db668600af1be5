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
"""Privacy metrics: white-box membership inference against diffusion generators, and sample-level leakage.

Membership inference against any generator of the contract (``cmrsynth.generative``): each attack receives the
generator bound to the audited slices' conditions (``Generator.bind``) and states its times as noise levels in
[0, 1] (0 clean, 1 pure noise), which every objective maps to its own time. Scores are "higher = more likely a
member", one per slice, averaged per patient:
- ``loss_scores``: the training loss at a noise level (Matsumoto et al. 2023; Carlini et al. 2023).
- ``pia_scores``: PIA, proximal initialisation (Kong et al., ICLR 2024): the model's own noise estimate at level 0
  is the noise, and the error of its estimate at the level against that noise is the statistic.
- ``secmi_scores``: SecMI-style step error (Duan et al., ICML 2023): deterministic (DDIM) inversion to the level,
  one step forward and back, and the distance between where it started and where it lands.
- ``midband_scores``: the denoising error of the predicted x0 restricted to a mid band of spatial
  frequencies, where memorised detail lives and anatomy-wide contrast does not dominate.

``attack_metrics`` turns member / non-member patient scores into ROC AUC, TPR at 1 % and 10 % FPR and balanced
accuracy, with bootstrap intervals over patients; the balanced-accuracy threshold is fitted on one half of the
patients and applied to the other (two-fold cross-fitting), never on the pairs it scores, and the bootstrap
resamples those out-of-fold calls rather than refitting (a resample holds duplicates that would leak).

Leakage: ``nearest_distances`` / ``leakage_report`` compare synthetic→train with holdout→train distances, and
``release_gate`` drops synthetic samples closer to a training sample than a holdout-calibrated threshold;
``nearest_other`` finds each sample's nearest neighbour of another subject (the audit's check that no non-member is
a copy of a member, ``cmrsynth.audit_guard``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cmrsynth.generative import BoundModel
from cmrsynth.labels import NUM_CLASSES


def _noise_like(z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.randn(z.shape, generator=g).to(z.device)


@torch.no_grad()
def loss_scores(model: BoundModel, x0: torch.Tensor, level: float, draws: int = 4, seed: int = 0) -> np.ndarray:
    """Minus the model's training loss at noise level ``level``, averaged over ``draws`` noise draws, per sample."""
    g = torch.Generator().manual_seed(seed)
    z0 = model.encode(x0)
    t = model.time_at_level(level, len(z0), z0.device)
    return -torch.stack([model.loss(z0, t, _noise_like(z0, g)) for _ in range(draws)]).mean(0).cpu().numpy()


@torch.no_grad()
def pia_scores(model: BoundModel, x0: torch.Tensor, level: float) -> np.ndarray:
    """PIA: eps0 = the model's noise estimate at level 0; x_t = the path at ``level`` with eps0; minus the mean
    absolute difference between the noise estimate at x_t and eps0."""
    z0 = model.encode(x0)
    eps0, _ = model.predict(z0, model.time_at_level(0.0, len(z0), z0.device))
    t = model.time_at_level(level, len(z0), z0.device)
    eps, _ = model.predict(model.add_noise(z0, eps0, t), t)
    return -((eps - eps0).abs()).flatten(1).mean(1).cpu().numpy()


def _deterministic_move(model: BoundModel, z: torch.Tensor, level_from: float, level_to: float) -> torch.Tensor:
    """One deterministic (DDIM) step from one noise level to another, either direction, with the model's estimates."""
    eps, z0 = model.predict(z, model.time_at_level(level_from, len(z), z.device))
    return model.add_noise(z0, eps, model.time_at_level(level_to, len(z), z.device))


@torch.no_grad()
def secmi_scores(model: BoundModel, x0: torch.Tensor, level: float = 0.1, interval: float = 0.01) -> np.ndarray:
    """SecMI t-error: invert x0 deterministically to ``level``, step to level + interval and back; minus the
    distance between where it started and where it lands."""
    z = model.encode(x0)
    for k in range(round(level / interval)):
        z = _deterministic_move(model, z, k * interval, min((k + 1) * interval, level))
    forward = _deterministic_move(model, z, level, level + interval)
    back = _deterministic_move(model, forward, level + interval, level)
    return -((back - z) ** 2).flatten(1).mean(1).cpu().numpy()


def band_mask(size: int, low: float = 0.1, high: float = 0.35) -> torch.Tensor:
    """A radial mask of spatial frequencies between ``low`` and ``high`` cycles per pixel (Nyquist is 0.5)."""
    f = torch.fft.fftfreq(size)
    r = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    return ((r >= low) & (r < high)).float()


@torch.no_grad()
def midband_scores(model: BoundModel, x0: torch.Tensor, level: float, draws: int = 4, seed: int = 0,
                   band: tuple[float, float] = (0.1, 0.35)) -> np.ndarray:
    """Minus the mid-band energy of the clean-sample reconstruction error at noise level ``level``."""
    g = torch.Generator().manual_seed(seed)
    z0 = model.encode(x0)
    t = model.time_at_level(level, len(z0), z0.device)
    mask = band_mask(z0.shape[-1], *band).to(z0.device)
    errors = []
    for _ in range(draws):
        _, z0_hat = model.predict(model.add_noise(z0, _noise_like(z0, g), t), t)
        errors.append((torch.fft.fft2(z0_hat - z0).abs() ** 2 * mask).flatten(1).mean(1))
    return -torch.stack(errors).mean(0).cpu().numpy()


def per_patient(scores: Sequence[float], patients: Sequence[str]) -> dict[str, float]:
    """Mean slice score per patient."""
    by: dict[str, list[float]] = defaultdict(list)
    for s, p in zip(scores, patients):
        by[p].append(float(s))
    return {p: float(np.mean(v)) for p, v in by.items()}


def roc_auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member), ties counting half (Mann-Whitney).

    The same value as ``monai.metrics.compute_roc_auc``, kept as one numpy line because the bootstrap calls it a
    thousand times per attack on index resamples, where building label tensors would dominate."""
    m, n = np.asarray(members, float)[:, None], np.asarray(non_members, float)[None, :]
    return float((m > n).mean() + 0.5 * (m == n).mean())


def tpr_at_fpr(members: np.ndarray, non_members: np.ndarray, fpr: float) -> float:
    """True-positive rate at the strictest threshold whose false-positive rate is at most ``fpr``."""
    non = np.sort(np.asarray(non_members, float))[::-1]
    allowed = int(np.floor(fpr * len(non)))  # non-members allowed above the threshold
    threshold = non[allowed] if allowed < len(non) else -np.inf
    return float((np.asarray(members, float) > threshold).mean())


def _best_rule(members: np.ndarray, non_members: np.ndarray) -> tuple[float, float]:
    """(sign, threshold) with the best balanced accuracy for the calls ``sign * score >= threshold``; the sign
    is -1 when members score lower (an attack whose signal runs the other way is still an attack)."""
    best = (-1.0, 1.0, 0.0)
    for sign in (1.0, -1.0):
        m, n = sign * members, sign * non_members
        values = np.unique(np.concatenate([m, n]))
        candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])  # between scores
        accs = [0.5 * ((m >= c).mean() + (n < c).mean()) for c in candidates]
        if max(accs) > best[0]:
            best = (max(accs), sign, float(candidates[int(np.argmax(accs))]))
    return best[1], best[2]


def _group_index(groups: Sequence | None, n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(group number of each element, element indices of each group); no groups: every element its own."""
    if groups is None:
        return np.arange(n), [np.array([i]) for i in range(n)]
    codes = {g: k for k, g in enumerate(dict.fromkeys(groups))}
    number = np.array([codes[g] for g in groups])
    return number, [np.flatnonzero(number == k) for k in range(len(codes))]


def out_of_fold_calls(members: np.ndarray, non_members: np.ndarray, seed: int = 0, member_groups: Sequence | None = None,
                      non_member_groups: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Member / non-member calls for every score from a threshold fitted on the other half of the patients.

    Two-fold cross-fitting: patients (``*_groups``: the patient of each score; default: one score each) are split
    at random into halves; each half is called with the threshold (and direction) that maximises balanced accuracy
    on the other half, so no rule ever sees the scores (or the patients) it calls.

    Returns:
        (called-member flags of the members, called-member flags of the non-members), in input order.
    """
    m, n = np.asarray(members, float), np.asarray(non_members, float)
    rng = np.random.default_rng(seed)
    group_m, group_n = _group_index(member_groups, len(m))[0], _group_index(non_member_groups, len(n))[0]
    fold_m = (rng.permutation(group_m.max() + 1) % 2)[group_m]
    fold_n = (rng.permutation(group_n.max() + 1) % 2)[group_n]
    call_m, call_n = np.zeros(len(m), bool), np.zeros(len(n), bool)
    for fold in (0, 1):
        sign, c = _best_rule(m[fold_m != fold], n[fold_n != fold])
        call_m[fold_m == fold] = sign * m[fold_m == fold] >= c
        call_n[fold_n == fold] = sign * n[fold_n == fold] >= c
    return call_m, call_n


def cross_fitted_accuracy(members: np.ndarray, non_members: np.ndarray, seed: int = 0) -> float:
    """Balanced accuracy of the out-of-fold calls (see ``out_of_fold_calls``)."""
    call_m, call_n = out_of_fold_calls(members, non_members, seed)
    return float(0.5 * (call_m.mean() + (~call_n).mean()))


FPR_LEVELS = {"tpr_at_0.1pct_fpr": 0.001, "tpr_at_1pct_fpr": 0.01, "tpr_at_10pct_fpr": 0.10}


def attack_metrics(member_scores: Mapping[str, float], non_member_scores: Mapping[str, float], n_boot: int = 1000,
                   seed: int = 0, groups: Mapping[str, str] | None = None) -> dict:
    """Attack success from scores (higher = member), each with a bootstrap 95 % interval over patients.

    Scores are per patient (keys: patients), or per slice with ``groups`` mapping each key to its patient: the
    bootstrap then resamples patients with all their slices (slices of one patient are not independent) and the
    cross-fitted threshold is fitted on other patients.

    Returns:
        {"auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "tpr_at_10pct_fpr", "balanced_accuracy"}: {"value",
        "ci95"}, plus counts. With N non-member scores, FPRs below 1/N are not resolvable: TPR at 1 % FPR is then
        TPR at FPR 0.
    """
    m, n = np.array(list(member_scores.values()), float), np.array(list(non_member_scores.values()), float)
    if len(m) < 2 or len(n) < 2:
        raise ValueError(f"need at least 2 member and 2 non-member scores, got {len(m)} and {len(n)}")
    gm = [groups[k] for k in member_scores] if groups else None
    gn = [groups[k] for k in non_member_scores] if groups else None
    if groups and (len(set(gm)) < 2 or len(set(gn)) < 2):
        raise ValueError(f"need at least 2 member and 2 non-member patients, got {len(set(gm))} and {len(set(gn))}")
    call_m, call_n = out_of_fold_calls(m, n, seed, gm, gn)  # fixed once: resampling must not refit thresholds
    balanced = lambda i, j: 0.5 * (call_m[i].mean() + (~call_n[j]).mean())  # noqa: E731
    stats = {"auc": lambda i, j: roc_auc(m[i], n[j])}
    stats |= {name: (lambda i, j, f=fpr: tpr_at_fpr(m[i], n[j], f)) for name, fpr in FPR_LEVELS.items()}
    stats["balanced_accuracy"] = balanced
    members_of, non_members_of = _group_index(gm, len(m))[1], _group_index(gn, len(n))[1]
    rng = np.random.default_rng(seed)
    pick = lambda parts: np.concatenate([parts[k] for k in rng.integers(0, len(parts), len(parts))])  # noqa: E731
    boots = [(pick(members_of), pick(non_members_of)) for _ in range(n_boot)]
    out: dict = {"members": len(members_of), "non_members": len(non_members_of)}
    if groups:
        out |= {"member_scores": len(m), "non_member_scores": len(n)}
    everyone = (np.arange(len(m)), np.arange(len(n)))
    for name, fn in stats.items():
        values = [fn(i, j) for i, j in boots]
        out[name] = {"value": float(fn(*everyone)), "ci95": [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]}
    return out


def slice_descriptors(masks: np.ndarray, images: np.ndarray | None = None) -> np.ndarray:
    """What makes a slice easy or hard to denoise for any model, member or not: per slice, the share of each
    structure in the mask and its boundary length, and (with images) intensity mean and spread, total variation and
    spectral energy in a low, mid and high band. (N, H, W) label maps and images -> (N, D) descriptors."""
    masks = np.asarray(masks)
    parts = [np.stack([(masks == k).mean((1, 2)) for k in range(1, NUM_CLASSES)], 1),
             ((np.diff(masks, axis=1) != 0).mean((1, 2)) + (np.diff(masks, axis=2) != 0).mean((1, 2)))[:, None]]
    if images is not None:
        x = torch.as_tensor(np.asarray(images, np.float32))
        power = torch.fft.fft2(x - x.mean((1, 2), keepdim=True)).abs() ** 2
        bands = [band_mask(x.shape[-1], low, high) for low, high in ((0.0, 0.1), (0.1, 0.25), (0.25, 1.0))]
        parts += [x.mean((1, 2))[:, None].numpy(), x.std((1, 2))[:, None].numpy(),
                  ((x.diff(dim=1).abs().mean((1, 2)) + x.diff(dim=2).abs().mean((1, 2))))[:, None].numpy(),
                  np.log(torch.stack([(power * b).mean((1, 2)) for b in bands], 1).numpy() + 1e-8)]
    return np.concatenate(parts, 1).astype(float)


def _ridge(features: np.ndarray, target: np.ndarray, penalty: float) -> np.ndarray:
    """Ridge regression weights; the first column (the intercept) is not penalised."""
    eye = np.eye(features.shape[1]) * penalty
    eye[0, 0] = 0.0
    return np.linalg.solve(features.T @ features + eye, features.T @ target)


def calibrated_scores(scores: Sequence[float], descriptors: np.ndarray, reference: Sequence[bool], groups: Sequence,
                      folds: int = 5, penalty: float = 1.0, seed: int = 0) -> np.ndarray:
    """Per-example difficulty calibration without shadow generators: the quantile-regression membership attack
    (Bertran et al., NeurIPS 2023) in its Gaussian form.

    On reference examples (known non-members), the attack score's mean and spread are regressed on each example's
    ``descriptors`` (``slice_descriptors``; ridge for the mean, ridge on the log absolute residual for the spread);
    the calibrated score is (score - predicted mean) / predicted spread: how far a slice sits above what the model
    does on unseen slices like it. Patients (``groups``: the patient of each example) are dealt into ``folds``, the
    reference ones and the others separately; each fold is calibrated by the model fitted on the reference patients
    of the other folds, so no example is calibrated on itself and members and non-members are calibrated alike.
    Higher still means member.
    """
    s = np.asarray(scores, float)
    ref = np.asarray(reference, bool)
    d = np.asarray(descriptors, float)
    features = np.column_stack([np.ones(len(s)), (d - d.mean(0)) / (d.std(0) + 1e-12)])
    patients = np.array([str(g) for g in groups])
    ref_patients, other_patients = np.unique(patients[ref]), np.unique(patients[~ref])
    if len(ref_patients) < 2:
        raise ValueError(f"difficulty calibration needs at least 2 reference patients, got {len(ref_patients)}")
    rng = np.random.default_rng(seed)
    folds = min(folds, len(ref_patients))
    fold_of = {**dict(zip(rng.permutation(ref_patients), np.arange(len(ref_patients)) % folds)),
               **dict(zip(rng.permutation(other_patients), np.arange(len(other_patients)) % folds))}
    fold = np.array([fold_of[p] for p in patients])
    mean, spread = np.zeros(len(s)), np.zeros(len(s))
    for k in range(folds):  # every patient, reference or not, is calibrated by one model fitted without its fold
        fit = ref & (fold != k)
        w = _ridge(features[fit], s[fit], penalty)
        residual = s[fit] - features[fit] @ w
        v = _ridge(features[fit], np.log(np.abs(residual) + 1e-12), penalty)
        sd = np.clip(np.exp(features @ v + 0.635), 0.2 * residual.std(), 5 * residual.std())  # E log|N(0, sd)| = log sd - 0.635
        apply = fold == k
        mean[apply], spread[apply] = (features @ w)[apply], sd[apply]
    return (s - mean) / np.maximum(spread, 1e-12)


def nearest_distances(queries: np.ndarray, references: np.ndarray, exclude_self: bool = False, batch: int = 256) -> np.ndarray:
    """Euclidean (RMS per element) distance from each query to its nearest reference, and the second nearest.

    Args:
        queries: (N, ...) arrays (images or features), flattened.
        references: (M, ...).
        exclude_self: queries are the references themselves (skip the zero self-distance).

    Returns:
        (N, 2): nearest and second-nearest distances.
    """
    q = torch.as_tensor(np.asarray(queries, np.float32)).flatten(1)
    r = torch.as_tensor(np.asarray(references, np.float32)).flatten(1)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries and references differ in size: {tuple(q.shape[1:])} vs {tuple(r.shape[1:])}")
    out = []
    for i in range(0, len(q), batch):
        d = torch.cdist(q[i:i + batch], r) / q.shape[1] ** 0.5
        if exclude_self:
            d[torch.arange(d.shape[0]), torch.arange(i, i + d.shape[0])] = float("inf")
        out.append(d.topk(2, largest=False).values)
    return torch.cat(out).numpy()


def nearest_other(queries: np.ndarray, references: np.ndarray, query_labels: Sequence | None = None,
                  reference_labels: Sequence | None = None, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Distance (RMS per element, as ``nearest_distances``) and index of each query's nearest reference, skipping
    references whose label equals the query's (e.g. slices of the same subject).

    Args:
        queries: (N, ...) arrays, flattened.
        references: (M, ...).
        query_labels: (N,) labels, or None to skip nothing.
        reference_labels: (M,) labels; needed with ``query_labels``.

    Returns:
        (N,) distances (inf where every reference is skipped) and (N,) indices into ``references``.
    """
    q = torch.as_tensor(np.asarray(queries, np.float32)).flatten(1)
    r = torch.as_tensor(np.asarray(references, np.float32)).flatten(1)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries and references differ in size: {tuple(q.shape[1:])} vs {tuple(r.shape[1:])}")
    if query_labels is not None:
        codes = {v: k for k, v in enumerate(sorted(set(map(str, query_labels)) | set(map(str, reference_labels))))}
        q_code = torch.tensor([codes[str(v)] for v in query_labels])
        r_code = torch.tensor([codes[str(v)] for v in reference_labels])
    distances, indices = [], []
    for i in range(0, len(q), batch):
        d = torch.cdist(q[i:i + batch], r) / q.shape[1] ** 0.5
        if query_labels is not None:
            d[q_code[i:i + batch, None] == r_code[None, :]] = float("inf")
        value, index = d.min(1)
        distances.append(value)
        indices.append(index)
    return torch.cat(distances).numpy(), torch.cat(indices).numpy()


def copy_threshold(holdout_to_train: np.ndarray, quantile: float = 0.01) -> float:
    """Distance below which a synthetic sample counts as a near copy: a low quantile of holdout→train distances.

    A real patient never seen in training lands that close to a training sample only ``quantile`` of the time.
    """
    return float(np.quantile(np.asarray(holdout_to_train, float), quantile))


def leakage_report(synthetic_to_train: np.ndarray, holdout_to_train: np.ndarray, quantile: float = 0.01) -> dict:
    """Compare synthetic→train with holdout→train nearest distances (first column of ``nearest_distances``).

    Returns:
        medians, the near-copy threshold and counts, the nearest-neighbour distance ratio (NNDR, nearest over
        second nearest) median, and the share of synthetic samples closer to train than the median holdout.
    """
    syn, hold = np.asarray(synthetic_to_train, float), np.asarray(holdout_to_train, float)
    threshold = copy_threshold(hold[:, 0], quantile)
    return {
        "synthetic_median": float(np.median(syn[:, 0])), "holdout_median": float(np.median(hold[:, 0])),
        "threshold": threshold, "threshold_quantile": quantile,
        "near_copies": int((syn[:, 0] < threshold).sum()), "synthetic": len(syn),
        "near_copy_rate": float((syn[:, 0] < threshold).mean()),
        "nndr_median_synthetic": float(np.median(syn[:, 0] / np.maximum(syn[:, 1], 1e-12))),
        "nndr_median_holdout": float(np.median(hold[:, 0] / np.maximum(hold[:, 1], 1e-12))),
        "closer_than_median_holdout": float((syn[:, 0] < np.median(hold[:, 0])).mean()),
    }


def release_gate(synthetic_to_train: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean keep-mask: synthetic samples at least ``threshold`` from every training sample."""
    return np.asarray(synthetic_to_train, float)[:, 0] >= threshold


def mask_dice_nearest(synthetic_masks: np.ndarray, train_masks: np.ndarray) -> np.ndarray:
    """For each synthetic mask, the highest Dice to any training mask (label-wise overlap of RV, MYO and LV pooled).

    1.0 means an exact copy of a training mask.
    """
    from cmrsynth.masks import pairwise_dice

    return pairwise_dice(synthetic_masks, train_masks).max(1)

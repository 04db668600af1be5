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
from __future__ import annotations

import numpy as np
import pytest

from cmrsynth.transforms import (
    ClassIndexd,
    HeartCentredCropd,
    PercentileScaled,
    ResampleInPlaned,
    crop_around,
    labelled_slices,
    paired_augmentation,
    resample_in_plane,
)


def _disc(n=60, r=12.0, centre=(30, 30)):
    x, y = np.mgrid[:n, :n]
    return ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 < r**2).astype(np.uint8)


def test_resampling_keeps_label_area_in_mm():
    label = np.stack([_disc() * 3, _disc(r=8) * 2], axis=-1)
    out = resample_in_plane(label, (1.0, 1.0), 2.5, is_label=True)
    assert out.shape == (24, 24, 2) and out.dtype == np.uint8
    for k, s in ((3, 0), (2, 1)):
        area_in, area_out = (label[:, :, s] == k).sum() * 1.0, (out[:, :, s] == k).sum() * 2.5**2
        assert area_out == pytest.approx(area_in, rel=0.06)


def test_resample_dict_updates_spacing():
    d = ResampleInPlaned(spacing=2.0)({"image": np.ones((30, 20, 3), np.float32), "label": np.zeros((30, 20, 3), np.uint8),
                                        "spacing": (1.0, 1.0, 8.0)})
    assert d["image"].shape == (15, 10, 3) and d["label"].shape == (15, 10, 3) and d["spacing"] == (2.0, 2.0, 8.0)
    np.testing.assert_allclose(d["image"], 1.0, atol=1e-5)


def test_crop_is_centred_on_the_heart_and_pads_outside():
    label = np.zeros((50, 50, 2), np.uint8)
    label[40:46, 2:8, 0] = 3
    image = np.arange(50 * 50 * 2, dtype=np.float32).reshape(50, 50, 2)
    d = HeartCentredCropd(size=16)({"image": image, "label": label})
    assert d["image"].shape == (16, 16, 2) and d["roi_centre"] == pytest.approx((42.5, 4.5))
    assert d["foreground_lost"] == 0.0
    assert (d["label"][5:11, 5:11, 0] == 3).all() and d["label"].sum() == 3 * 36  # centred: 7.5 is the middle
    assert d["image"][:, 0, 0].min() == image.min()  # padded columns hold the volume's minimum


def test_crop_reports_lost_foreground():
    label = np.zeros((40, 40, 1), np.uint8)
    label[0:40, 20, 0] = 2
    d = HeartCentredCropd(size=10)({"image": np.zeros((40, 40, 1), np.float32), "label": label})
    assert d["foreground_lost"] == pytest.approx(0.75)


def test_crop_around_outside_volume_is_fill():
    out = crop_around(np.ones((4, 4, 1)), (100.0, 100.0), 6, fill=-5)
    assert (out == -5).all()


def test_percentile_scaling_to_minus_one_one():
    x = np.random.default_rng(0).normal(100, 20, (20, 20, 3)).astype(np.float32)
    x[0, 0, 0] = 1e6  # an outlier is clipped away, not allowed to squash the rest
    d = PercentileScaled(lower=1, upper=99)({"image": x})
    assert d["image"].min() == -1 and d["image"].max() == 1
    assert np.median(d["image"]) == pytest.approx(0, abs=0.1)


def test_bad_transform_arguments():
    with pytest.raises(ValueError, match="lower=50, upper=10"):
        PercentileScaled(lower=50, upper=10)
    with pytest.raises(ValueError, match="spacing must be positive, got 0"):
        ResampleInPlaned(spacing=0)
    with pytest.raises(ValueError, match="at least 8"):
        HeartCentredCropd(size=4)


def test_slice_selection():
    label = np.zeros((4, 4, 10), np.uint8)
    label[1, 1, 2:9] = 1
    assert labelled_slices(label) == [2, 3, 4, 5, 6, 7, 8]
    assert labelled_slices(label, n_central=3) == [4, 5, 6]


def test_n4_reduces_a_multiplicative_bias_field():
    from cmrsynth.data.phantom import phantom_patient
    from cmrsynth.transforms import N4BiasCorrectiond

    image, mask, _, _ = phantom_patient("NOR", "ED", np.random.default_rng(0))
    k = image.shape[2] // 3
    flat = image[:, :, k : k + 1].astype(np.float32)
    x = np.linspace(-1, 1, flat.shape[0])[:, None, None]
    biased = flat * np.exp(1.2 * x)  # strong left-right bias field
    corrected = N4BiasCorrectiond()({"image": biased})["image"]
    lv = mask[:, :, k : k + 1] == 3

    def spread(img):  # the LV pool is uniform: the bias shows as a left-right trend inside it
        xs = np.nonzero(lv)[0]
        left, right = img[lv][xs < np.median(xs)].mean(), img[lv][xs >= np.median(xs)].mean()
        return abs(np.log(right / left))

    assert spread(corrected) < 0.3 * spread(biased)


def test_class_index_transform_reads_group_phase_and_slice_position():
    by_phase = ClassIndexd(["NOR", "DCM"], ["ED", "ES"])
    by_position = ClassIndexd(["NOR", "DCM"], ["ED", "ES"], positions=["basal", "mid", "apical"])
    slice_ = {"group": "DCM", "phase": "ED", "slice_position": 0.9}
    assert by_phase(slice_)["class"] == 2 and by_position(slice_)["class"] == 8
    assert by_position({"group": "DCM", "phase": "ED"})["class"] == 12  # no position recorded: the null class
    assert ClassIndexd([])(slice_)["class"] == 0


def _heart_pair(size: int = 64):
    """An image whose intensity is a function of its label map (RV left of the LV, as in a short-axis slice)."""
    yy, xx = np.mgrid[:size, :size]
    label = np.zeros((size, size), np.float32)
    label[(yy - 32) ** 2 + (xx - 36) ** 2 < 14 ** 2] = 2  # myocardium disc
    label[(yy - 32) ** 2 + (xx - 36) ** 2 < 9 ** 2] = 3  # LV cavity
    label[((yy - 32) ** 2 + (xx - 16) ** 2 < 8 ** 2) & (label == 0)] = 1  # RV, on the left
    image = np.array([-1.0, 0.6, -0.2, 0.9], np.float32)[label.astype(int)]
    return image[None], label[None]


def test_paired_augmentation_moves_the_mask_with_the_image():
    image, label = _heart_pair()
    augment = paired_augmentation(prob=1.0, gamma=(1.0, 1.0))  # geometry only, so intensities still name labels
    moved = 0
    for seed in range(5):
        augment.set_random_state(seed)
        out = augment({"image": image.copy(), "label": label.copy()})
        img, lab = np.asarray(out["image"])[0], np.asarray(out["label"])[0]
        assert set(np.unique(lab)) <= {0.0, 1.0, 2.0, 3.0}  # still a label map (nearest neighbour)
        interior = np.abs(img[..., None] - np.array([-1.0, 0.6, -0.2, 0.9])).min(-1) < 0.05  # away from blurred edges
        assert (np.abs(img - np.array([-1.0, 0.6, -0.2, 0.9])[lab.astype(int)]) < 0.05)[interior].mean() > 0.97
        moved += not np.array_equal(lab, label[0])
        rv, lv = np.argwhere(lab == 1)[:, 1].mean(), np.argwhere(lab == 3)[:, 1].mean()
        assert rv < lv  # never mirrored: the RV stays on the left
    assert moved == 5


def test_paired_augmentation_jitters_contrast_of_the_image_only_and_augments_masks_alone():
    image, label = _heart_pair()
    augment = paired_augmentation(prob=1.0, rotate_degrees=0.0, scale=0.0, shift_pixels=0.0, gamma=(2.0, 2.0))
    out = augment({"image": image.copy(), "label": label.copy()})
    assert np.array_equal(np.asarray(out["label"]), label)
    assert not np.allclose(np.asarray(out["image"]), image) and np.asarray(out["image"]).min() >= -1.0 - 1e-5
    shift = paired_augmentation(prob=1.0, rotate_degrees=0.0, scale=0.0, shift_pixels=6.0, gamma=(1.0, 1.0))
    moves = []
    for seed in range(6):
        shift.set_random_state(seed)
        lab = np.asarray(shift({"image": image.copy(), "label": label.copy()})["label"])[0]
        moves.append(np.argwhere(lab == 3).mean(0) - np.argwhere(label[0] == 3).mean(0))
    assert (np.abs(moves) > 0.5).any(0).all()  # shifts along both axes
    masks_only = paired_augmentation(image_key=None, prob=1.0)
    masks_only.set_random_state(1)
    assert not np.array_equal(np.asarray(masks_only({"label": label.copy()})["label"]), label)

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

from cmrsynth.report import LABEL_COLOURS, overlay_rgb, save_overlay_grid


def test_overlay_colours_only_labelled_pixels():
    image = np.linspace(0, 1, 16).reshape(4, 4)
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0], mask[3, 3] = 3, 1
    rgb = overlay_rgb(image, mask, alpha=1.0)
    assert rgb.shape == (4, 4, 3)
    np.testing.assert_allclose(rgb[0, 0], LABEL_COLOURS[3])
    np.testing.assert_allclose(rgb[3, 3], LABEL_COLOURS[1])
    np.testing.assert_allclose(rgb[1, 1], [image[1, 1]] * 3)


def test_grid_png_is_written(tmp_path):
    images = [np.random.default_rng(i).random((16, 16)) for i in range(5)]
    masks = [np.zeros((16, 16))] * 4 + [None]
    path = save_overlay_grid(images, masks, tmp_path / "g.png", titles=list("abcde"), ncols=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_grid_errors():
    with pytest.raises(ValueError, match="no images"):
        save_overlay_grid([], None, "x.png")
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        save_overlay_grid([np.zeros((2, 2))] * 2, [None], "x.png")
    with pytest.raises(ValueError, match="does not match"):
        overlay_rgb(np.zeros((2, 2)), np.zeros((3, 3)))

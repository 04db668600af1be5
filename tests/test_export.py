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
"""cmrsynth.export: every inference network traced to TorchScript, loaded back, equal to the eager network."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from cmrsynth.export import export_generator, export_network, generator_inputs
from tests.conftest import REPO

GENERATORS = ["mask_generator", "ddpm_cmr", "fm_cmr", "ldm_cmr"]


def _generator(bundle: str):
    cfg = ConfigParser()
    cfg.read_config([str(REPO / "bundles" / bundle / "configs" / f) for f in ("common.yaml", "inference.yaml")])
    cfg.update({"device": "$torch.device('cpu')", "image_size": 32})
    torch.manual_seed(0)
    return cfg.get_parsed_content("generator").eval()


@pytest.mark.parametrize("bundle", GENERATORS)
def test_traced_generator_networks_match_eager_on_new_inputs(bundle, tmp_path):
    generator = _generator(bundle)
    paths = export_generator(generator, tmp_path)
    traced = torch.jit.load(str(paths["denoiser"]))
    x, t, mask, labels = generator_inputs(generator, batch=3, seed=1)  # not the tracing inputs (batch 2, seed 0)
    with torch.no_grad():
        eager = generator.denoiser(x, t, mask if mask.shape[1] > 1 else None, labels if generator.classes.groups else None)
        torch.testing.assert_close(traced(x, t, mask, labels), eager, rtol=1e-4, atol=1e-5)
        if bundle == "ldm_cmr":
            decoder = torch.jit.load(str(paths["decoder"]))
            torch.testing.assert_close(decoder(x), generator.codec.decode(x), rtol=1e-4, atol=1e-5)
        else:
            assert "decoder" not in paths


def test_traced_segmenter_matches_eager(tmp_path):
    cfg = ConfigParser()
    cfg.read_config(str(REPO / "bundles" / "seg_utility" / "configs" / "common.yaml"))
    cfg.update({"device": "$torch.device('cpu')"})
    network = cfg.get_parsed_content("network").eval()
    path = export_network(network, torch.randn(2, 1, 64, 64), tmp_path / "segmenter.ts")
    image = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(path))(image), network(image), rtol=1e-4, atol=1e-5)

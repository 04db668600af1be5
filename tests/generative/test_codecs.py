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
import torch

from cmrsynth.errors import CMRDataError
from cmrsynth.generative import AutoencoderCodec, ConditionalDenoiser, Generator, KLAutoencoder, SignedDistanceCodec
from tests.conftest import heart_mask
from tests.generative.helpers import OBJECTIVES, tiny_generator


def tiny_autoencoder(seed: int = 0) -> KLAutoencoder:
    torch.manual_seed(seed)
    return KLAutoencoder(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 8, 8), num_res_blocks=1,
                         attention_levels=(False, False, False), latent_channels=2, norm_num_groups=4,
                         with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)


def tiny_latent_generator(seed: int = 0, mask_mode: str = "concat") -> Generator:
    """A latent generator: a 16x16 slice is a 2 x 4 x 4 latent; the denoiser works on latents."""
    objective = OBJECTIVES["ddpm"]()
    objective.clip_sample = False
    base = tiny_generator(objective, in_channels=6, out_channels=2, seed=seed)
    return Generator(ConditionalDenoiser(base.denoiser.network, mask_mode), base.objective,
                     codec=AutoencoderCodec(tiny_autoencoder(seed), downsampling=4), data_channels=1, image_size=16,
                     sampler="ddim", num_inference_steps=3, name="ldm")


def _slices(n=4, size=16):
    return torch.rand((n, 1, size, size), generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_kl_autoencoder_reconstructs_through_a_sample_in_training_and_the_mean_in_eval():
    ae = tiny_autoencoder()
    x = _slices()
    ae.train()
    a, b = ae(x), ae(x)
    assert a.shape == x.shape and not torch.equal(a, b) and ae.kl.item() > 0
    ae.eval()
    torch.testing.assert_close(ae(x), ae(x))
    torch.testing.assert_close(ae(x), ae.decode(ae.encode(x)[0]))


def test_codec_shapes_and_latent_scale_from_training_slices():
    codec = AutoencoderCodec(tiny_autoencoder(), downsampling=4).eval()
    assert codec.latent_shape((1, 64, 64)) == (2, 16, 16)
    with pytest.raises(ValueError, match=r"slice size \(30, 30\) is not divisible by the autoencoder's factor 4"):
        codec.latent_shape((1, 30, 30))
    x = _slices(8)
    raw_std = codec.encode(x).std().item()
    scale = codec.calibrate([{"image": x[:4]}, {"image": x[4:]}])
    assert scale == pytest.approx(1 / raw_std, rel=1e-4)
    z = codec.encode(x)
    assert z.shape == (8, 2, 4, 4) and z.std().item() == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(codec.decode(z), codec.autoencoder.decode(z / scale))  # decode undoes the scale
    with pytest.raises(ValueError, match="no training batches"):
        codec.calibrate([])


def test_codec_loads_stage_one_weights_and_names_a_missing_or_unfit_file(tmp_path):
    trained, fresh = AutoencoderCodec(tiny_autoencoder(1), 4), AutoencoderCodec(tiny_autoencoder(2), 4)
    path = tmp_path / "checkpoint_final.pt"
    torch.save({"autoencoder": trained.autoencoder.state_dict(), "discriminator": {}}, path)
    x = _slices()
    assert not torch.equal(fresh.encode(x), trained.encode(x))
    torch.testing.assert_close(fresh.load_autoencoder(path).encode(x), trained.encode(x))
    with pytest.raises(CMRDataError, match="missing.pt: trained autoencoder not found: run configs/train_autoencoder.yaml"):
        fresh.load_autoencoder(tmp_path / "missing.pt")
    torch.save({"autoencoder": tiny_autoencoder().encoder.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CMRDataError, match="other.pt: weights do not fit the configured autoencoder"):
        fresh.load_autoencoder(tmp_path / "other.pt")


def test_codec_loads_the_autoencoder_ema_when_asked(tmp_path):
    trained = tiny_autoencoder(1)
    ema = torch.optim.swa_utils.AveragedModel(trained, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.1)  # the raw weights move on; the EMA keeps the earlier ones
    path = tmp_path / "checkpoint_final.pt"
    torch.save({"autoencoder": trained.state_dict(), "autoencoder_ema": ema.state_dict()}, path)
    x = _slices()
    from_ema = AutoencoderCodec(tiny_autoencoder(2), 4).load_autoencoder(path, "autoencoder_ema")
    torch.testing.assert_close(from_ema.encode(x), AutoencoderCodec(ema.module, 4).encode(x))
    assert not torch.allclose(from_ema.encode(x), AutoencoderCodec(trained, 4).encode(x))
    torch.save({"autoencoder": trained.state_dict(), "autoencoder_ema": {}}, path)
    with pytest.raises(CMRDataError, match="holds no autoencoder_ema weights"):
        from_ema.load_autoencoder(path, "autoencoder_ema")


@pytest.mark.parametrize("mask_mode", ["concat", "spade"])
def test_latent_generator_samples_in_latent_space_and_decodes_to_pixels(mask_mode):
    if mask_mode == "spade":
        from monai.networks.nets import SPADEDiffusionModelUNet

        gen = tiny_latent_generator()
        gen.network = ConditionalDenoiser(SPADEDiffusionModelUNet(2, 2, 2, label_nc=4, channels=(8, 8), attention_levels=(False, False),
                                                                  num_res_blocks=1, norm_num_groups=8), "spade")
    else:
        gen = tiny_latent_generator()
    mask = torch.nn.functional.one_hot(torch.randint(0, 4, (3, 16, 16)), 4).permute(0, 3, 1, 2).float()
    seen = []
    out, nfe = gen.eval().sample(mask=mask, callback=lambda i, z: seen.append(z.shape))
    assert out.shape == (3, 1, 16, 16) and nfe == 3 and seen[0] == (3, 2, 4, 4)
    loss = gen.loss_at(_slices(3), 0.5, mask=mask)  # white-box attacks score latents of the slices
    assert loss.shape == (3,) and torch.isfinite(loss).all()


def test_checkpoint_carries_the_codec_and_is_refused_without_it(tmp_path):
    trained = tiny_latent_generator(seed=1)
    trained.codec.calibrate([{"image": _slices()}])
    path = tmp_path / "checkpoint_final.pt"
    torch.save({"ema": trained.network.state_dict(), "codec": trained.codec.state_dict(), "card": trained.card.state_dict()}, path)
    fresh = tiny_latent_generator(seed=2).load_checkpoint(path)
    assert fresh.codec.scale_factor.item() == trained.codec.scale_factor.item() != 1.0
    mask = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 16, 16)), 4).permute(0, 3, 1, 2).float()
    draw = lambda g: g.eval().sample(mask=mask, generator=torch.Generator().manual_seed(0))[0]  # noqa: E731
    torch.testing.assert_close(draw(fresh), draw(trained))
    torch.save({"ema": trained.network.state_dict(), "card": trained.card.state_dict()}, tmp_path / "no_codec.pt")
    with pytest.raises(CMRDataError, match="no_codec.pt: checkpoint holds no codec weights; ldm needs its autoencoder_kl"):
        fresh.load_checkpoint(tmp_path / "no_codec.pt")
    pixel = tiny_generator(OBJECTIVES["ddpm"]())
    with pytest.raises(CMRDataError, match=r"another generator \(codec: 'identity' in the file, 'autoencoder_kl' here"):
        torch.save({"ema": pixel.network.state_dict(), "card": pixel.card.state_dict()}, tmp_path / "pixel.pt")
        fresh.load_checkpoint(tmp_path / "pixel.pt")


def test_a_latent_generator_refuses_clipping_latents_to_the_pixel_range():
    """DDIM clamps its x0 estimate to [-1, 1] for pixels; in a latent space of unit variance that clamp ruined
    samples, more with more steps (measured: faithfulness LV Dice 0.37 at DDIM-50 against 0.83 at DDIM-10)."""
    base = tiny_generator(OBJECTIVES["ddpm"]())
    with pytest.raises(ValueError, match=r"ldm: the objective clamps x0 to the pixel range \[-1, 1\].*set clip_sample: false"):
        Generator(base.network, base.objective, codec=AutoencoderCodec(tiny_autoencoder(), 4), name="ldm")


def _heart_onehot(n=32, lv=5, wall=3, rv=True):
    labels = torch.as_tensor(heart_mask(n, lv, wall, rv, rv_gap=3, rv_radius=4).astype(np.int64))[None]
    return labels, torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 2 - 1


def test_signed_distance_codec_round_trips_masks_and_is_signed():
    codec = SignedDistanceCodec(scale=4.0)
    labels, onehot = _heart_onehot()
    z = codec.encode(onehot)
    assert z.shape == (1, 3, 32, 32) and codec.latent_shape((4, 32, 32)) == (3, 32, 32)
    assert z.min() >= -1 and z.max() <= 1
    assert z[0, 1, 16, 16] == 1.0 and z[0, 1, 0, 0] == -1.0  # LV map: saturated inside, -1 far outside
    assert z[0, 0, 16, 16 + 6] > 0 > z[0, 1, 16, 16 + 6]  # a myocardium pixel: inside the disc, outside the LV
    torch.testing.assert_close(codec.decode(z), onehot)
    assert torch.equal(codec.encode(labels[:, None].float()), z)  # integer labels encode the same way
    no_rv = codec.encode(_heart_onehot(rv=False)[1])
    assert (no_rv[0, 2] == -1).all()  # an absent structure is "outside" everywhere


def test_signed_distance_decoding_keeps_the_lv_inside_the_myocardium():
    codec = SignedDistanceCodec(scale=4.0)
    z = -torch.ones(1, 3, 8, 8)
    z[0, 0, 2:6, 2:6] = 0.5  # the heart disc
    z[0, 1, 1:7, 1:7] = 0.5  # an LV map that spills past the disc
    z[0, 2, 3:5, 0:4] = 0.5  # an RV map overlapping the disc
    labels = codec.decode(z).argmax(1)[0]
    assert (labels[2:6, 2:6] == 3).all() and (labels == 3).sum() == 16  # LV only where the disc is
    assert (labels[3:5, 0:2] == 1).all() and not (labels[2:6, 2:6] == 1).any()  # RV only outside the disc
    with pytest.raises(ValueError, match="positive"):
        SignedDistanceCodec(scale=0)


def test_a_signed_distance_mask_generator_samples_one_hot_masks():
    objective = OBJECTIVES["ddpm"]()
    base = tiny_generator(objective, in_channels=3, out_channels=3, mask_mode="none", groups=["NOR"])
    generator = Generator(base.denoiser, objective, codec=SignedDistanceCodec(2.0), classes=base.classes, data_channels=4,
                          image_size=16, sampler="ddim", num_inference_steps=3, name="mask_generator")
    masks, nfe = generator.sample(2, class_labels=torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))
    assert masks.shape == (2, 4, 16, 16) and set(masks.unique().tolist()) <= {-1.0, 1.0} and nfe == 3
    assert (masks.sum(1) == -2).all()  # exactly one channel on per pixel
    _, onehot = _heart_onehot(n=16, lv=3, wall=2)
    assert generator.loss_at(onehot, 0.5, class_labels=torch.tensor([0])).shape == (1,)
    assert generator.card.facts()["codec"] == "signed_distance"

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
"""Codecs: the space a generator's objective works in. ``IdentityCodec`` keeps pixels; ``SignedDistanceCodec`` turns
masks into nested signed distance maps; ``AutoencoderCodec`` (latent diffusion) maps slices to the latents of a
trained KL autoencoder and back.

A codec has ``encode``, ``decode``, ``latent_shape``, ``to``, a ``name`` recorded in the generator card and
``bounded`` (its space lies in [-1, 1], where a sampler may clamp x0). A codec with weights is an ``nn.Module``:
its ``state_dict`` travels in the generator's checkpoint (entry ``codec``), so a latent generator's checkpoint is
self-contained.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL
from scipy import ndimage

from cmrsynth.errors import CMRDataError


def load_module_weights(module: nn.Module, weights: dict, path: str | Path, what: str) -> None:
    """``load_state_dict`` that names the file and the first mismatch instead of a PyTorch traceback."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        problem = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e).splitlines()[0]
        raise CMRDataError(path, f"weights do not fit {what} ({problem.strip()[:200]})") from None


class IdentityCodec:
    """Pixel space: encode and decode are the identity."""

    name = "identity"
    bounded = True  # data lie in [-1, 1], so a sampler may clamp its x0 estimate there

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) data -> (B, C', H', W') latents."""
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> data."""
        return z

    def latent_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The latent (C', H', W') of a data shape (C, H, W)."""
        return tuple(shape)

    def to(self, device) -> IdentityCodec:
        """Nothing to move."""
        return self

    def eval(self) -> IdentityCodec:
        """Nothing to switch."""
        return self


class SignedDistanceCodec:
    """Cardiac masks as nested signed distance maps: a smooth target for a mask generator.

    A one-hot mask (B, 4, H, W) in [-1, 1] (background, RV, MYO, LV) becomes three maps: the heart disc (LV cavity +
    myocardium), the LV cavity and the RV cavity, each the signed distance to the structure's edge in pixels
    (positive inside), divided by ``scale`` and clipped to [-1, 1]. Decoding thresholds at 0: LV = disc and LV > 0,
    myocardium = disc minus LV, RV = RV > 0 outside the disc. The nesting makes the myocardium a ring by
    construction (the LV lies inside the disc), where a one-hot argmax leaves gaps wherever noise flips a thin ring
    pixel, and distance maps vary smoothly, which a denoiser learns faster than class edges. Encoding runs scipy's
    exact Euclidean distance transform on the CPU (about 40 ms per batch of 16 at 64x64).

    Args:
        scale: distance in pixels that maps to +-1 (beyond it the map saturates); ~1/8 of the slice size.

    References:
        Park et al., DeepSDF, CVPR 2019 (signed distance as a shape representation); Xue et al., Shape-aware organ
        segmentation by predicting signed distance maps, AAAI 2020.
    """

    name = "signed_distance"
    bounded = True
    structures = ((2, 3), (3,), (1,))  # label values of the disc, LV cavity and RV cavity

    def __init__(self, scale: float = 8.0):
        if not scale > 0:
            raise ValueError(f"scale must be a positive number of pixels, got {scale}")
        self.scale = float(scale)

    def _signed_distance(self, inside: np.ndarray) -> np.ndarray:
        if not inside.any():
            return np.full(inside.shape, -1.0, np.float32)
        if inside.all():
            return np.ones(inside.shape, np.float32)
        d = np.where(inside, ndimage.distance_transform_edt(inside) - 0.5, 0.5 - ndimage.distance_transform_edt(~inside))
        return np.clip(d / self.scale, -1.0, 1.0).astype(np.float32)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) one-hot masks in [-1, 1] (or (B, 1, H, W) integer labels) -> (B, 3, H, W) distance maps."""
        labels = (x.argmax(1) if x.shape[1] > 1 else x[:, 0].round()).cpu().numpy()
        maps = [[self._signed_distance(np.isin(m, values)) for values in self.structures] for m in labels]
        return torch.from_numpy(np.asarray(maps, np.float32)).to(x.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) distance maps -> (B, 4, H, W) one-hot masks in [-1, 1]."""
        disc, lv, rv = (z[:, i] > 0 for i in range(3))
        labels = torch.zeros_like(disc, dtype=torch.long)
        labels[rv & ~disc] = 1
        labels[disc] = 2
        labels[disc & lv] = 3
        return F.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 2.0 - 1.0

    def latent_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """(3, H, W) of a one-hot mask shape (4, H, W)."""
        return (len(self.structures), *shape[1:])

    def to(self, device) -> SignedDistanceCodec:
        """Nothing to move."""
        return self

    def eval(self) -> SignedDistanceCodec:
        """Nothing to switch."""
        return self


class KLAutoencoder(AutoencoderKL):
    """MONAI's ``AutoencoderKL`` whose forward returns the reconstruction alone, keeping that forward's KL term.

    ignite engines, image metrics and a discriminator expect a network that returns one image; the KL divergence
    of the posterior N(z_mu, z_sigma^2) from N(0, I) (mean over the batch of the sum over latent elements, as in
    Rombach et al. 2022) is kept in ``self.kl`` for ``ReconstructionKLLoss``. ``encode`` / ``decode`` are MONAI's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of x through a sampled latent (the posterior mean in eval mode, so validation is
        repeatable); ``self.kl`` holds this forward's KL term."""
        z_mu, z_sigma = self.encode(x)
        variance = z_sigma.pow(2)
        self.kl = 0.5 * (z_mu.pow(2) + variance - torch.log(variance.clamp(min=1e-12)) - 1).flatten(1).sum(1).mean()
        return self.decode(self.sampling(z_mu, z_sigma) if self.training else z_mu)


class AutoencoderCodec(nn.Module):
    """Latent space of a trained ``KLAutoencoder``: encode to scaled latent means, decode back to pixels.

    Encoding takes the posterior mean, not a sample: the same slice always maps to the same latent, so training
    targets, membership scores and reconstructions are repeatable (with the small KL weight used here the posterior
    spread is far below the latent scale). Latents are multiplied by ``scale_factor`` (1 / std of the training
    latents, Rombach et al. 2022, sec. 4.3.2) so the diffusion sees unit-variance data; the factor is a buffer, so
    it is stored with the generator's checkpoint.

    Args:
        autoencoder: the ``KLAutoencoder`` (its weights come from ``load_autoencoder`` or the generator's
            checkpoint).
        downsampling: spatial factor between a slice and its latent (2 ** (number of autoencoder levels - 1)).
    """

    name = "autoencoder_kl"
    bounded = False

    def __init__(self, autoencoder: KLAutoencoder, downsampling: int):
        super().__init__()
        self.autoencoder, self.downsampling = autoencoder, int(downsampling)
        self.latent_channels = autoencoder.latent_channels
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) slices -> (B, latent_channels, H / f, W / f) scaled latent means."""
        return self.autoencoder.encode(x)[0] * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> slices."""
        return self.autoencoder.decode(z / self.scale_factor)

    def latent_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """(latent_channels, H / f, W / f) of a slice shape (C, H, W); refuses a size the autoencoder cannot halve."""
        _, *spatial = shape
        if any(s % self.downsampling for s in spatial):
            raise ValueError(f"slice size {tuple(spatial)} is not divisible by the autoencoder's factor {self.downsampling}")
        return (self.latent_channels, *(s // self.downsampling for s in spatial))

    def load_autoencoder(self, path: str | Path, key: str = "autoencoder") -> AutoencoderCodec:
        """Load the stage-1 weights (``key`` of a train_autoencoder checkpoint: ``autoencoder``, or ``autoencoder_ema``
        for its EMA), refusing a missing or unfit file."""
        path = Path(path)
        if not path.is_file():
            raise CMRDataError(path, "trained autoencoder not found: run configs/train_autoencoder.yaml first")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if key in state and not state[key]:
            raise CMRDataError(path, f"holds no {key} weights (train the autoencoder with them switched on)")
        weights = state.get(key, state)
        if "n_averaged" in weights:  # an AveragedModel (EMA) of the autoencoder
            weights = {k.removeprefix("module."): v for k, v in weights.items() if k != "n_averaged"}
        load_module_weights(self.autoencoder, weights, path, "the configured autoencoder")
        return self

    @torch.no_grad()
    def calibrate(self, batches: Iterable, image_key: str = "image") -> float:
        """Set ``scale_factor`` to 1 / std of the unscaled latent means of ``batches`` (the training slices)."""
        from cmrsynth.generative.training import plain_tensor

        device = self.scale_factor.device
        latents = [self.autoencoder.encode(plain_tensor(batch[image_key], device))[0] for batch in batches]
        if not latents:
            raise ValueError("no training batches to calibrate the latent scale on")
        self.scale_factor.fill_(1.0 / torch.cat(latents).std().clamp(min=1e-6))
        logging.getLogger(__name__).info(f"latent scale factor {self.scale_factor.item():.4f} "
                                         f"from {sum(len(z) for z in latents)} training slices")
        return self.scale_factor.item()

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
"""Codecs: the space a generator's objective works in. ``IdentityCodec`` keeps pixels; an autoencoder
(latent diffusion) is a codec with the same three methods."""

from __future__ import annotations

import torch


class IdentityCodec:
    """Pixel space: encode and decode are the identity."""

    name = "identity"

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

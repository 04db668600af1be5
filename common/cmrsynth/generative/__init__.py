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
"""The generator contract: objectives, conditioning, samplers, codecs and the ``Generator`` that binds them.

This package is the only place that knows what a diffusion or a flow model is. A generator bundle defines
``generator`` in its ``configs/common.yaml``; everything downstream (``cmrsynth.generate``, ``cmrsynth.audit``,
fidelity scoring, the benchmarks) reaches it through ``load_generator`` or that config id.
"""

from __future__ import annotations

from pathlib import Path

from cmrsynth.generative.autoencoder import (DiscriminatorAdversarialLoss, GeneratorAdversarialLoss, ReconstructionKLLoss,
                                             RecordTotalLoss)
from cmrsynth.generative.codecs import AutoencoderCodec, IdentityCodec, KLAutoencoder, SignedDistanceCodec
from cmrsynth.generative.conditioning import ClassIndex, ConditionalDenoiser, MaskMode, guided
from cmrsynth.generative.consistency import (ConsistencyInferer, ConsistencyPrepareBatch, PseudoHuberLoss,
                                             TeacherSolutionPrepareBatch, consistency_function, pseudo_huber, target_network)
from cmrsynth.generative.distill import CoupledPrepareBatch, TeacherPairs, load_teacher, teacher_pairs
from cmrsynth.generative.generator import BoundModel, Generator, GeneratorCard
from cmrsynth.generative.objectives import (Coupling, DiffusionObjective, FlowMatchingObjective, Objective,
                                            PredictionType)
from cmrsynth.generative.samplers import SAMPLERS, get_sampler
from cmrsynth.generative.training import ObjectivePrepareBatch, plain_tensor

__all__ = ["AutoencoderCodec", "BoundModel", "ClassIndex", "ConditionalDenoiser", "ConsistencyInferer",
           "ConsistencyPrepareBatch", "CoupledPrepareBatch", "Coupling", "DiffusionObjective",
           "DiscriminatorAdversarialLoss", "FlowMatchingObjective", "Generator", "GeneratorAdversarialLoss",
           "GeneratorCard", "IdentityCodec", "KLAutoencoder", "MaskMode", "Objective", "ObjectivePrepareBatch",
           "PredictionType", "PseudoHuberLoss", "ReconstructionKLLoss", "RecordTotalLoss", "SAMPLERS",
           "SignedDistanceCodec", "TeacherPairs", "TeacherSolutionPrepareBatch", "consistency_function",
           "get_sampler", "guided", "load_generator", "load_teacher", "plain_tensor", "pseudo_huber",
           "target_network", "teacher_pairs"]


def load_generator(bundle: str | Path, run_root: str | Path, device="cpu", overrides: dict | None = None,
                   checkpoint: str = "checkpoint_final.pt") -> Generator:
    """The ``generator`` of a bundle's configs (common.yaml + inference.yaml), with trained weights loaded.

    Args:
        bundle: the generator bundle folder (its configs).
        run_root: the run folder holding ``models/<checkpoint>``.
        overrides: config values the generator was trained with, if not its defaults (e.g. a preset).
        checkpoint: a file in ``run_root/models``: the training checkpoint or ``best_ema.pt``.
    """
    from monai.bundle import ConfigParser

    bundle, run_root = Path(bundle), Path(run_root)
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / f) for f in ("common.yaml", "inference.yaml")])
    parser.update({**(overrides or {}), "bundle_root": str(run_root), "device": f"$torch.device('{device}')"})
    generator = parser.get_parsed_content("generator")
    generator.name = bundle.name
    return generator.to(device).load_checkpoint(run_root / "models" / checkpoint).eval()

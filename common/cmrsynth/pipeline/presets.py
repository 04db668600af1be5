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
"""What the pipeline runs: its presets (budgets) and the generators it can compare (a registry: one entry each).

A preset fixes step counts, not minutes, so a busy machine changes the wall time, not the result. ``demo`` fine-tunes
the phantom-trained weights shipped in ``zoo/phantom`` (public by construction, hash-verified when installed) for a
few hundred steps; ``cpu64`` trains every network at the bundles' benchmark budgets, from scratch except ddpm_cmr,
whose private-by-default recipe starts from its phantom weights in every preset (``public_start``); ``paper128`` is
the reference resolution for a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cmrsynth.errors import CMRDataError


@dataclass(frozen=True)
class TrainStep:
    """One training command of a generator bundle: its config files after common.yaml and its step budget."""

    configs: tuple[str, ...]
    budget: str  # the preset's epochs entry that sets its length ("mask", "image", "public_image", "autoencoder", "latent")
    from_zoo: str | None = "models/best_ema.pt"  # the shipped file it fine-tunes from (None: installed, not trained)

    @property
    def public_start(self) -> bool:
        """Whether the step's recipe is public_start.yaml: it starts from the shipped phantom weights in every preset,
        not only with the preset's ``from_zoo``."""
        return "public_start.yaml" in self.configs


#: how a 2-step reflow student samples: DDPM bundles on the trailing grid (t = 999, 499), flow matching with Euler
DDPM_STUDENT = {"num_inference_steps": 2, "timestep_spacing": "trailing"}
FLOW_STUDENT = {"num_inference_steps": 2}


@dataclass(frozen=True)
class GeneratorSpec:
    """A generator bundle as the pipeline runs it."""

    bundle: str
    train: tuple[TrainStep, ...]
    label: str  # the paper's name for it, used in the report
    student: dict = field(default_factory=lambda: dict(DDPM_STUDENT))  # inference overrides of its few-step student

    @property
    def distill_configs(self) -> tuple[str, ...]:
        """The student's training configs: the last training step's, then distill.yaml."""
        return (*self.train[-1].configs, "distill.yaml")


IMAGE_TRAIN = (TrainStep(("train.yaml",), "image"),)
# private by default (privacy_audit benchmark): public phantom pre-training, then few private passes (public_start.yaml)
PUBLIC_IMAGE_TRAIN = (TrainStep(("train.yaml", "public_start.yaml"), "public_image"),)
GENERATORS: dict[str, GeneratorSpec] = {
    "ddpm_cmr": GeneratorSpec("ddpm_cmr", PUBLIC_IMAGE_TRAIN, "DDPM"),
    "fm_cmr": GeneratorSpec("fm_cmr", IMAGE_TRAIN, "flow matching", dict(FLOW_STUDENT)),
    "ldm_cmr": GeneratorSpec("ldm_cmr", (TrainStep(("train_autoencoder.yaml",), "autoencoder", from_zoo=None),
                                         TrainStep(("train.yaml", "train_diffusion.yaml"), "latent")), "latent diffusion"),
}
MASK_GENERATOR = GeneratorSpec("mask_generator", (TrainStep(("train.yaml",), "mask"),), "mask DDPM")


@dataclass(frozen=True)
class Distillation:
    """Budgets of the reflow students (each bundle's configs/distill.yaml)."""

    num_pairs: int = 2048
    validation_pairs: int = 256
    pair_steps: int = 50
    epochs: int = 10  # x the preset's epoch_length


@dataclass(frozen=True)
class Preset:
    """Budgets of one pipeline run."""

    name: str
    size: int
    epochs: dict[str, int]  # per training step kind, epochs of ``epoch_length`` iterations
    epoch_length: int = 200
    from_zoo: bool = False  # start each generator from the shipped phantom-trained weights
    per_class: int = 6  # masks per (group, phase, position) class
    keep_implausible: bool = False  # keep masks that fail the anatomy checks (smoke: a mask generator barely trained)
    segmenter_steps: int = 1000
    segmenter_overrides: dict = field(default_factory=dict)
    few_real: tuple[int, ...] = (5,)  # few-real curve: k real training patients, alone and with each generator's data
    mixed: bool = True  # a segmenter on real + synthetic slices (1:1) per generator
    audit_slices_per_patient: int = 6
    phantom_per_group: int = 4  # the embedded cohort's size when no --input is given
    sampling: str = "fast"  # "fast": 2-step reflow students of every generator; "teacher": the bundles' own samplers
    distill: Distillation = Distillation()
    device_note: str = "CPU"


PRESETS: dict[str, Preset] = {
    "demo": Preset("demo", 64, {"mask": 2, "image": 2, "public_image": 2, "autoencoder": 0, "latent": 2}, epoch_length=50,
                   from_zoo=True, per_class=2, segmenter_steps=100, few_real=(), audit_slices_per_patient=4,
                   segmenter_overrides={"batch_size": 16}, sampling="teacher", mixed=False),
    # the plumbing in a few minutes (tests): numbers from it mean nothing. It takes the demo's training paths (the shipped
    # phantom weights, ldm_cmr's autoencoder as shipped; cpu64 trains it) and, unlike the demo, distils students
    "smoke": Preset("smoke", 32, {"mask": 1, "image": 1, "public_image": 1, "autoencoder": 0, "latent": 1}, epoch_length=4,
                    from_zoo=True, per_class=1, segmenter_steps=50, few_real=(), audit_slices_per_patient=2, phantom_per_group=1,
                    keep_implausible=True, distill=Distillation(num_pairs=16, validation_pairs=4, pair_steps=2, epochs=1)),
    # segmenters at batch 16: eleven of them (real, 3 synthetic, 3 mixed, few-real, 3 few-real + synthetic) are the
    # preset's largest cost on a CPU, about 0.5 s a step at batch 32 on 2 cores
    # public_image: ddpm_cmr from the phantom weights, 6 x 200 private steps (the audited private default)
    "cpu64": Preset("cpu64", 64, {"mask": 20, "image": 15, "public_image": 6, "autoencoder": 10, "latent": 10},
                    segmenter_overrides={"batch_size": 16}),
    # public_image at 128x128 starts from the 64x64 phantom weights (the UNet is size-agnostic) and keeps the audited
    # number of private passes (more passes leaked more at 64x64: 2,400 steps did); not audited at 128x128
    "paper128": Preset("paper128", 128, {"mask": 40, "image": 40, "public_image": 6, "autoencoder": 20, "latent": 20},
                       segmenter_steps=4000,
                       few_real=(5, 10), device_note="GPU (the 128x128 reference preset)"),
}


SAMPLING = ("fast", "teacher")


def preset(name: str, sampling: str | None = None) -> Preset:
    """The named preset, with its sampling changed when asked; an unknown name is one clear error naming the allowed
    ones."""
    if name not in PRESETS:
        raise CMRDataError("--preset", f"unknown preset {name!r}; allowed: {sorted(PRESETS)}")
    if sampling is not None and sampling not in SAMPLING:
        raise CMRDataError("--sampling", f"unknown sampling {sampling!r}; allowed: {list(SAMPLING)}")
    return replace(PRESETS[name], sampling=sampling) if sampling else PRESETS[name]


def generators(names: list[str]) -> list[str]:
    """Check generator names against the registry (unknown ones are one clear error); keeps their order."""
    unknown = [n for n in names if n not in GENERATORS]
    if unknown or not names:
        raise CMRDataError("--generators", f"unknown generator(s) {unknown}; allowed: {sorted(GENERATORS)}")
    return list(dict.fromkeys(names))

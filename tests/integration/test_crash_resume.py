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
"""Crash-safe training, proven for every trainer: SIGKILL a real ``monai.bundle run`` at five seeded random points
(mid-epoch, mid-checkpoint-write including the final checkpoint, and from outside at a random moment), rerun the same
command each time, and check that it resumes from the last complete checkpoint, never loads a torn file, and ends at
the configured step count. Runs are forked from a warm interpreter (``warm_bundle``) so 40 runs fit in the budget."""

from __future__ import annotations

import json
import random
import signal

import pytest

from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.prepare import PrepareConfig, prepare_cohort
from cmrsynth.engines import CRASH_ENV, checkpoints_newest_first, load_checkpoint
from cmrsynth.errors import CMRDataError
from tests.conftest import REPO
from tests.integration.warm_bundle import WarmBundleLauncher

pytestmark = pytest.mark.integration
BUNDLES = REPO / "bundles"
EPOCHS, EPOCH_LENGTH = 4, 3
TINY = {"image_size": 32, "channels": [8, 16], "attention_levels": [False, True], "norm_num_groups": 8,
        "num_head_channels": 8, "batch_size": 8, "epoch_length": EPOCH_LENGTH, "val_interval": 100, "max_epochs": EPOCHS,
        "progress_bar": False}
GENERATOR = ["common.yaml", "train.yaml"]
#: trainer -> (bundle, configs, overrides beyond TINY, checkpoint folder under the bundle root)
TRAINERS = {
    "mask_generator": ("mask_generator", GENERATOR, {}, "models"),
    "ddpm_cmr": ("ddpm_cmr", GENERATOR, {}, "models"),
    "fm_cmr": ("fm_cmr", GENERATOR, {}, "models"),
    "ddpm_cmr_dp": ("ddpm_cmr", [*GENERATOR, "dp_train.yaml"], {"dp_target_epsilon": 8.0, "dp_delta": 0.01, "dp_epochs": 6},
                    "models"),
    "seg_utility": ("seg_utility", GENERATOR, {"batch_size": 8}, "models"),
    "ldm_autoencoder": ("ldm_cmr", ["common.yaml", "train_autoencoder.yaml"], {"autoencoder_channels": [8, 16],
                                                                                "adversarial_warmup": 2}, "models/autoencoder"),
    "ldm_diffusion": ("ldm_cmr", [*GENERATOR, "train_diffusion.yaml"], {"autoencoder_channels": [8, 16]}, "models"),
}


@pytest.fixture(scope="module")
def prepared(phantom_cohort_master, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "p32"
    prepare_cohort(read_acdc(phantom_cohort_master), out, PrepareConfig(size=32, fractions=(0.6, 0.2, 0.2)))
    return out


@pytest.fixture(scope="module")
def launcher():
    warm = WarmBundleLauncher()
    yield warm
    warm.close()


def _overrides(name: str, prepared) -> dict:
    _, _, extra, _ = TRAINERS[name]
    data = {"real_datalist": str(prepared / "datalist.json")} if name == "seg_utility" else {"dataset_dir": str(prepared)}
    tiny = {k: v for k, v in TINY.items() if name != "seg_utility" or k in ("batch_size", "epoch_length", "val_interval",
                                                                            "max_epochs", "progress_bar")}
    return {**tiny, **data, **extra}


def _complete_checkpoint(folder):
    """The checkpoint a rerun must resume from: the newest file that loads with weights_only=True, or None."""
    for path in checkpoints_newest_first(folder):
        try:
            return str(path), load_checkpoint(path)["trainer"]["iteration"]
        except CMRDataError:
            continue
    return None, 0


def _kill_plan(rng: random.Random) -> list[tuple[str, int | float]]:
    """Five kill points: outside at a random moment after a checkpoint, mid-epoch, mid-write of an epoch checkpoint,
    mid-epoch again, and mid-write of the run's last (final) checkpoint."""
    return [("external", rng.uniform(0.0, 0.3)), ("iteration", rng.randint(1, 2)), ("save", 1),
            ("iteration", rng.randint(1, 2)), ("save", -1)]


def _crash_and_resume(launcher, name, prepared, root, seed):
    bundle, configs, _, ckpt = TRAINERS[name]
    bundle, folder, overrides = BUNDLES / bundle, root / ckpt, _overrides(name, prepared)
    total = EPOCHS * EPOCH_LENGTH
    kills = []
    for n, (kind, value) in enumerate(_kill_plan(random.Random(seed))):
        expected, progress = _complete_checkpoint(folder)
        log = root / f"run{n}.log"
        if kind == "external":
            pid = launcher.start(bundle, configs, root, overrides, log)
            first = progress // EPOCH_LENGTH + 1
            code = launcher.kill_when(pid, lambda: any(folder.glob(f"checkpoint_epoch={first}.pt")), value)
        else:
            point = progress + value if kind == "iteration" else value if value > 0 else EPOCHS - progress // EPOCH_LENGTH + 1
            pid = launcher.start(bundle, configs, root, overrides, log, env={CRASH_ENV: f"{kind}:{point}"})
            code = launcher.wait(pid)
        text = log.read_text()
        assert code == -signal.SIGKILL, f"{name} run {n} ({kind}) ended with {code} instead of being killed:\n{text[-2000:]}"
        assert (f"resumed from {expected}" in text) if expected else ("resumed from" not in text), text[-2000:]
        if kind == "save":  # the torn write is there, under a name resume never picks, and it does not load
            torn = list(folder.glob(".checkpoint*.pt.tmp"))
            assert torn, f"{name}: no torn checkpoint after a kill mid-write"
            with pytest.raises(CMRDataError):
                load_checkpoint(torn[0])
        kills.append((kind, value, progress))
    expected, progress = _complete_checkpoint(folder)
    log = root / "final.log"
    assert launcher.wait(launcher.start(bundle, configs, root, overrides, log)) == 0, log.read_text()[-3000:]
    assert f"resumed from {expected}" in log.read_text()
    final = load_checkpoint(folder / "checkpoint_final.pt")["trainer"]
    assert final["iteration"] == total, f"{name} ended at iteration {final['iteration']}, expected {total}"
    for path in folder.glob("checkpoint*.pt"):  # every checkpoint left behind is complete
        load_checkpoint(path)
    return kills


@pytest.mark.parametrize("name", [n for n in TRAINERS if not n.startswith("ldm")])
def test_killed_trainer_resumes_from_its_last_complete_checkpoint(launcher, prepared, tmp_path, name):
    kills = _crash_and_resume(launcher, name, prepared, tmp_path / name, seed=sum(map(ord, name)))
    assert len(kills) == 5 and {k for k, _, _ in kills} == {"external", "iteration", "save"}


def test_killed_ldm_stages_resume_from_their_last_complete_checkpoints(launcher, prepared, tmp_path):
    """Both ldm_cmr stages, the autoencoder first (its final checkpoint is what stage 2 encodes with)."""
    root = tmp_path / "ldm"
    for stage in ("ldm_autoencoder", "ldm_diffusion"):
        assert len(_crash_and_resume(launcher, stage, prepared, root, seed=sum(map(ord, stage)))) == 5
    assert json.dumps(load_checkpoint(root / "models" / "checkpoint_final.pt")["card"]).count("autoencoder") >= 1

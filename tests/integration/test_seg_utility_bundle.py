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
"""seg_utility as users run it: train on mixed sources, evaluate per patient, segment, export TorchScript."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import pytest
import torch
from monai.bundle import ConfigParser

from cmrsynth.bundle_run import override_args, run_bundle, trainer_progress
from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.prepare import PrepareConfig, prepare_cohort
from tests.conftest import REPO

pytestmark = pytest.mark.integration
BUNDLE = REPO / "bundles" / "seg_utility"


@pytest.fixture(scope="module")
def prepared(phantom_cohort_master, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "p32"
    prepare_cohort(read_acdc(phantom_cohort_master), out, PrepareConfig(size=32, fractions=(0.6, 0.2, 0.2)))
    return out


def test_two_process_ddp_training_with_torchrun(prepared, tmp_path):
    """multi_gpu_train.yaml under torchrun: 2 processes, gloo on CPU; the ranks end with the same parameters and
    rank 0 writes the checkpoints and model.pt, which evaluate.yaml loads."""
    real = str(prepared / "datalist.json")
    save_ranks = tmp_path / "save_ranks.yaml"  # each rank keeps its own parameters at the end, to compare them
    save_ranks.write_text("finalize:\n"
                          "  - \"$torch.save(@network.module.state_dict(), os.path.join(@ckpt_dir, f'rank{dist.get_rank()}.pt'))\"\n"
                          "  - \"$dist.is_initialized() and dist.destroy_process_group()\"\n")
    files = json.dumps([str(BUNDLE / "configs" / c) for c in ("common.yaml", "train.yaml", "multi_gpu_train.yaml")] + [str(save_ranks)])
    overrides = override_args({"real_datalist": real, "max_epochs": 2, "epoch_length": 3, "val_interval": 1, "batch_size": 4,
                               "progress_bar": False, "bundle_root": str(tmp_path)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--config_file", files, *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    ranks = [torch.load(tmp_path / "models" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, value in ranks[0].items():
        torch.testing.assert_close(ranks[1][name], value, rtol=0, atol=0, msg=f"{name} differs across ranks")
    assert trainer_progress(tmp_path / "models" / "checkpoint_final.pt")["epoch"] == 2
    run_bundle(BUNDLE, ["common.yaml", "evaluate.yaml"], tmp_path, {"real_datalist": real, "eval_key": "test"})
    assert (tmp_path / "eval" / "evaluation" / "metrics.json").is_file()


def test_train_evaluate_segment_export(prepared, tmp_path):
    real = str(prepared / "datalist.json")
    sources = [{"datalist": real, "key": "training", "patients": 2}, {"datalist": real, "key": "training", "ratio": 0.5}]
    run_bundle(BUNDLE, ["common.yaml", "train.yaml"], tmp_path,
               {"real_datalist": real, "sources": sources, "max_epochs": 2, "epoch_length": 3, "val_interval": 1,
                "batch_size": 8, "progress_bar": False})
    composed = json.loads((tmp_path / "models" / "training_set.json").read_text())["training"]
    n_real = sum(e["source"] == 0 for e in composed)
    assert len({e["patient"] for e in composed if e["source"] == 0}) == 2
    assert sum(e["source"] == 1 for e in composed) == round(0.5 * n_real)

    run_bundle(BUNDLE, ["common.yaml", "evaluate.yaml"], tmp_path, {"real_datalist": real, "eval_key": "test"})
    metrics = json.loads((tmp_path / "eval" / "evaluation" / "metrics.json").read_text())
    test_patients = {p for p, v in json.loads((prepared / "datalist.json").read_text())["patients"].items() if v["split"] == "test"}
    assert set(metrics["per_patient"]) == test_patients
    assert {"ED/dice_lv", "ES/hd95_rv", "lv_ef_error", "myo_mass_error"} <= set(metrics["summary"])
    assert (tmp_path / "eval" / "evaluation" / "predictions.png").is_file()

    _check_fidelity(real, tmp_path)

    run_bundle(BUNDLE, ["common.yaml", "inference.yaml"], tmp_path, {"datalist": real, "datalist_key": "test"})
    written = sorted((tmp_path / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert len(written) == metrics["slices"]
    assert set(torch.unique(torch.as_tensor(nib.load(written[0]).get_fdata())).tolist()) <= {0.0, 1.0, 2.0, 3.0}

    ts = tmp_path / "models" / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
           "--ckpt_file", str(tmp_path / "models" / "model.pt"), "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
           "--config_file", str(BUNDLE / "configs" / "common.yaml"), "--bundle_root", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "common.yaml"))
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    eager.eval()
    scripted = torch.jit.load(str(ts))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=1e-4)


def _check_fidelity(real: str, root):
    """fidelity.yaml scores an (untrained) generator's images of the real test masks far worse than the real images."""
    from cmrsynth.generate import generate_images
    from tests.generative.helpers import ddpm_objective, tiny_generator

    generate_images(tiny_generator(ddpm_objective()), real, root / "untrained", mask_key="test", num_inference_steps=2)
    scores = {}
    for name, synthetic, key in (("untrained", root / "untrained" / "datalist.json", "training"), ("real", real, "test")):
        run_bundle(BUNDLE, ["common.yaml", "fidelity.yaml"], root,
                   {"real_datalist": real, "synthetic_datalist": str(synthetic), "synthetic_key": key,
                    "fidelity_dir": str(root / "fidelity" / name)})
        scores[name] = json.loads((root / "fidelity" / name / "fidelity.json").read_text())
    assert scores["untrained"]["paired"]["ssim"] < 0.5  # paired through provenance.json with the real test slices
    assert "paired" not in scores["real"]
    assert scores["real"]["fd_seg"] < 1e-6 < scores["untrained"]["fd_seg"]
    assert scores["real"]["mask_faithfulness"] == scores["real"]["real_dice"]
    assert scores["untrained"]["features"].endswith("not Inception")

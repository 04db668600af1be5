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
"""mask_generator and ddpm_cmr run as users run them: python -m monai.bundle run, 32x32 phantom data, tiny nets."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist

from cmrsynth.benchmark import validation_losses
from cmrsynth.bundle_run import override_args, run_bundle, trainer_progress
from cmrsynth.data.acdc import read_acdc
from cmrsynth.data.prepare import PrepareConfig, prepare_cohort
from tests.conftest import REPO

pytestmark = pytest.mark.integration
MASKS, IMAGES, FLOW, LATENT = (REPO / "bundles" / b for b in ("mask_generator", "ddpm_cmr", "fm_cmr", "ldm_cmr"))
AUDIT = REPO / "bundles" / "privacy_audit"
TINY = {"image_size": 32, "channels": [8, 16], "attention_levels": [False, True], "norm_num_groups": 8,
        "num_head_channels": 8, "batch_size": 8, "epoch_length": 3, "val_interval": 1}
TRAIN, INFER = ["common.yaml", "train.yaml"], ["common.yaml", "inference.yaml"]


@pytest.fixture(scope="module")
def prepared(phantom_cohort_master, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "p32"
    prepare_cohort(read_acdc(phantom_cohort_master), out, PrepareConfig(size=32, fractions=(0.6, 0.2, 0.2)))
    return out


def _tiny(**kw):
    return {**TINY, **kw}


def test_masks_then_images_chain(prepared, tmp_path):
    mg, dd = tmp_path / "mg", tmp_path / "dd"
    run_bundle(MASKS, TRAIN, mg, _tiny(dataset_dir=str(prepared), max_epochs=2))
    assert trainer_progress(mg / "models" / "checkpoint_final.pt") == {"epoch": 2, "iteration": 6}
    assert (mg / "models" / "best_ema.pt").is_file()
    run_bundle(MASKS, INFER, mg, _tiny(per_class=1, num_inference_steps=3, keep_implausible=True))
    masks = json.loads((mg / "eval" / "masks" / "datalist.json").read_text())
    assert len(masks["synthetic"]) == 30 and {e["group"] for e in masks["synthetic"]} == {"NOR", "DCM", "HCM", "MINF", "RV"}
    assert {e["position"] for e in masks["synthetic"]} == {"basal", "mid", "apical"}  # one class per (group, phase, position)

    run_bundle(IMAGES, TRAIN, dd, _tiny(dataset_dir=str(prepared), max_epochs=1, class_conditional=True,
                                        condition_dropout=0.2))
    run_bundle(IMAGES, INFER, dd, _tiny(mask_datalist=str(mg / "eval" / "masks" / "datalist.json"),
                                        num_inference_steps=3, class_conditional=True, guidance_scale=2.0))
    losses = validation_losses(IMAGES, prepared, dd, {k: v for k, v in TINY.items() if k != "batch_size"}
                               | {"class_conditional": True})
    assert set(losses) == {"raw", "ema"} and all(0 < v < 10 for v in losses.values())
    out = dd / "eval" / "images"
    items = load_decathlon_datalist(str(out / "datalist.json"), True, "training")  # what seg_utility reads
    assert len(items) == 30 and all(i["image"].endswith(".nii.gz") for i in items)
    assert (out / "samples.png").is_file()
    _check_privacy_audit(prepared, dd, out / "datalist.json")


def _check_privacy_audit(prepared, generator_root, synthetic, bundle=IMAGES, overrides=None):
    """privacy_audit runs on a trained generator bundle: attack table, leakage, report; the release gate writes its
    record. Only the generator's bundle and root change between generators."""
    audit = generator_root / "audit"
    run_bundle(AUDIT, ["audit.yaml"], audit, {
        "generator_bundle": str(bundle), "generator_root": str(generator_root), "real_datalist": str(prepared / "datalist.json"),
        "synthetic_datalist": str(synthetic), "generator_overrides": overrides or _tiny(class_conditional=True), "noise_levels": [0.05, 0.1],
        "slices_per_patient": 2})
    result = json.loads((audit / "eval" / "audit" / "audit.json").read_text())
    n = len(json.loads(synthetic.read_text())["training"])
    assert result["members"] == 3 and result["non_members"] == 2
    assert {"loss_t50", "pia_t50", "secmi_t100", "midband_t100"} <= set(result["membership"])
    assert result["leakage"]["pixel"]["synthetic"] == n
    assert result["planted_copy_check"]["pixel"]["sensitivity"]["exact"] == 1.0  # training slices planted as they are
    assert result["reconstruction"]["slices"] == 10 and {"neg_rms", "ssim"} <= set(result["reconstruction"]["membership"])
    report = (audit / "eval" / "audit" / "audit.md").read_text()
    assert "| loss_t50 |" in report and "| pixel | 100% |" in report
    assert (audit / "eval" / "audit" / "closest_synthetic_vs_train.png").is_file()
    run_bundle(AUDIT, ["release.yaml"], audit, {"real_datalist": str(prepared / "datalist.json"), "synthetic_datalist": str(synthetic)})
    record = json.loads((synthetic.parent / "datalist_released_release_record.json").read_text())
    assert record["kept"] + len(record["removed"]) == n


def test_images_for_real_masks_with_ddpm_and_spade(prepared, tmp_path):
    run_bundle(IMAGES, TRAIN, tmp_path, _tiny(dataset_dir=str(prepared), max_epochs=1, mask_mode="spade"))
    run_bundle(IMAGES, INFER, tmp_path, _tiny(mask_mode="spade", mask_datalist=str(prepared / "datalist.json"),
                                              mask_key="test", sampler="ddpm", max_images=2, num_inference_steps=1000))
    d = json.loads((tmp_path / "eval" / "images" / "datalist.json").read_text())
    assert d["summary"]["generated"] == 2 and d["summary"]["sampler"] == "ddpm" and d["summary"]["nfe"] == 1000  # full DDPM


def test_fm_cmr_train_infer_audit(prepared, tmp_path):
    """fm_cmr through the bundle CLI as users run it: train (exact-OT coupling, classes with guidance dropout,
    MLflow), draw images for real masks with two samplers, then the unchanged privacy audit."""
    from mlflow.tracking import MlflowClient

    fm = tmp_path / "fm"
    run_bundle(FLOW, TRAIN, fm, _tiny(dataset_dir=str(prepared), max_epochs=2, class_conditional=True, condition_dropout=0.2,
                                      coupling="exact_ot"), extra_args=["--tracking", "mlflow"], env={"MLFLOW_TRACKING_URI": ""})
    state = torch.load(fm / "models" / "checkpoint_final.pt", weights_only=False)
    assert state["card"]["objective"] == "flow_matching" and trainer_progress(fm / "models" / "checkpoint_final.pt")["epoch"] == 2
    [exp] = [e for e in MlflowClient(f"sqlite:///{fm / 'eval' / 'mlflow.db'}").search_experiments() if e.name == "fm_cmr"]
    summaries = {}
    for sampler, steps in (("midpoint", 2), ("dopri5", None)):
        out = fm / "eval" / sampler
        run_bundle(FLOW, INFER, fm, _tiny(mask_datalist=str(prepared / "datalist.json"), mask_key="test", output_dir=str(out),
                                          class_conditional=True, guidance_scale=2.0, sampler=sampler, num_inference_steps=steps))
        summaries[sampler] = json.loads((out / "datalist.json").read_text())["summary"]
        assert (out / "provenance.json").is_file() and "patient" not in json.dumps(summaries[sampler])
    assert summaries["midpoint"]["nfe"] == 4 and summaries["dopri5"]["nfe"] > 4
    _check_privacy_audit(prepared, fm, fm / "eval" / "midpoint" / "datalist.json", bundle=FLOW)


def test_ldm_cmr_autoencoder_then_diffusion_then_inference_and_audit(prepared, tmp_path):
    """ldm_cmr as users run it: stage 1 (resumed after a stop, MLflow), stage 2 refused until stage 1 exists, then
    SPADE-conditioned latent diffusion with classes, images for real masks, and the unchanged privacy audit."""
    from mlflow.tracking import MlflowClient

    ldm = tmp_path / "ldm"
    tiny = _tiny(autoencoder_channels=[8, 16], mask_mode="spade", class_conditional=True, autoencoder_ema=True)
    stage2 = ["common.yaml", "train.yaml", "train_diffusion.yaml"]
    with pytest.raises(RuntimeError):
        run_bundle(LATENT, stage2, ldm, {**tiny, "dataset_dir": str(prepared), "max_epochs": 1}, log=tmp_path / "refused.log")
    assert "models/autoencoder/checkpoint_final.pt: trained autoencoder not found: run configs/train_autoencoder.yaml" in (
        tmp_path / "refused.log").read_text()
    assert not list(ldm.rglob("*.pt"))
    for epochs in (1, 2):  # the second run resumes the first
        run_bundle(LATENT, ["common.yaml", "train_autoencoder.yaml"], ldm, {**tiny, "dataset_dir": str(prepared), "max_epochs": epochs,
                   "adversarial_warmup": 2}, extra_args=["--tracking", "mlflow"], env={"MLFLOW_TRACKING_URI": ""})
    assert trainer_progress(ldm / "models" / "autoencoder" / "checkpoint_final.pt") == {"epoch": 2, "iteration": 6}
    assert (ldm / "models" / "autoencoder" / "best_autoencoder.pt").is_file()
    assert torch.load(ldm / "models" / "autoencoder" / "checkpoint_final.pt", weights_only=False)["autoencoder_ema"]["n_averaged"] == 6
    [exp] = [e for e in MlflowClient(f"sqlite:///{ldm / 'eval' / 'mlflow.db'}").search_experiments() if e.name == "ldm_cmr"]
    runs = MlflowClient(f"sqlite:///{ldm / 'eval' / 'mlflow.db'}").search_runs([exp.experiment_id])
    assert any("val_ssim" in r.data.metrics and "train_loss" in r.data.metrics for r in runs)

    run_bundle(LATENT, stage2, ldm, {**tiny, "dataset_dir": str(prepared), "max_epochs": 1, "condition_dropout": 0.2})
    state = torch.load(ldm / "models" / "checkpoint_final.pt", weights_only=False)
    assert state["card"]["codec"] == "autoencoder_kl" and state["codec"]["scale_factor"].item() > 0
    assert "codec" in torch.load(ldm / "models" / "best_ema.pt", weights_only=False)
    out = ldm / "eval" / "images"
    run_bundle(LATENT, INFER, ldm, {**tiny, "mask_datalist": str(prepared / "datalist.json"), "mask_key": "test",
                                    "num_inference_steps": 3, "guidance_scale": 2.0})
    summary = json.loads((out / "datalist.json").read_text())["summary"]
    assert summary["nfe"] == 3 and summary["generated"] == len(json.loads((prepared / "datalist.json").read_text())["test"])
    image = nib.load(out / json.loads((out / "datalist.json").read_text())["training"][0]["image"])
    assert image.shape == (32, 32)  # decoded back to pixels
    _check_privacy_audit(prepared, ldm, out / "datalist.json", bundle=LATENT, overrides=tiny)

    student = tmp_path / "ldm_student"  # a reflow student keeps the teacher's autoencoder and latent scale
    run_bundle(LATENT, [*stage2, "distill.yaml"], student, {**tiny, "dataset_dir": str(prepared), "max_epochs": 1, "num_pairs": 8,
                                                            "validation_pairs": 4, "pair_steps": 2,
                                                            "teacher": str(ldm / "models" / "best_ema.pt")})
    taught = torch.load(student / "models" / "best_ema.pt", weights_only=True)["codec"]
    assert torch.equal(taught["scale_factor"], state["codec"]["scale_factor"])
    run_bundle(LATENT, INFER, student, {**tiny, "mask_datalist": str(prepared / "datalist.json"), "mask_key": "test",
                                        "num_inference_steps": 1})
    assert json.loads((student / "eval" / "images" / "datalist.json").read_text())["summary"]["nfe"] == 1


def test_a_generator_refuses_a_checkpoint_of_another_bundle(prepared, tmp_path):
    from cmrsynth.errors import CMRDataError
    from cmrsynth.generative import load_generator

    run_bundle(IMAGES, TRAIN, tmp_path, _tiny(dataset_dir=str(prepared), max_epochs=1))
    overrides = {k: v for k, v in TINY.items() if k in ("channels", "attention_levels", "num_head_channels")}
    assert load_generator(IMAGES, tmp_path, overrides=overrides).objective.name == "ddpm"
    with pytest.raises(CMRDataError, match=r"checkpoint_final.pt: checkpoint was written for another generator \(objective: 'ddpm'"):
        load_generator(FLOW, tmp_path, overrides=overrides)


def test_training_is_tracked_in_mlflow(prepared, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_bundle(MASKS, TRAIN, tmp_path, _tiny(dataset_dir=str(prepared), max_epochs=1, groups=[]),  # unconditional
               extra_args=["--tracking", "mlflow"],
               env={"MLFLOW_TRACKING_URI": ""})
    client = MlflowClient(f"sqlite:///{tmp_path / 'eval' / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "mask_generator"]
    runs = client.search_runs([exp.experiment_id])
    metrics = set().union(*(r.data.metrics for r in runs))
    assert "train_loss" in metrics and "val_mse" in metrics


def test_two_process_ddp_training_with_torchrun(prepared, tmp_path):
    """The multi_gpu_train.yaml overlay under torchrun: 2 processes, gloo on CPU, checkpoints from rank 0."""
    save_ranks = tmp_path / "save_ranks.yaml"  # each rank keeps its own parameters at the end, to compare them
    save_ranks.write_text("finalize:\n"
                          "  - \"$torch.save(@network.module.state_dict(), os.path.join(@ckpt_dir, f'rank{dist.get_rank()}.pt'))\"\n"
                          "  - \"$dist.is_initialized() and dist.destroy_process_group()\"\n")
    files = json.dumps([str(IMAGES / "configs" / c) for c in [*TRAIN, "multi_gpu_train.yaml"]] + [str(save_ranks)])
    overrides = override_args(_tiny(dataset_dir=str(prepared), max_epochs=2, batch_size=4, max_minutes=10))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--bundle_root", str(tmp_path), "--config_file", files, *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert trainer_progress(tmp_path / "models" / "checkpoint_final.pt")["epoch"] == 2
    assert "val_mse" in proc.stdout + proc.stderr
    ranks = [torch.load(tmp_path / "models" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, value in ranks[0].items():
        torch.testing.assert_close(ranks[1][name], value, rtol=0, atol=0, msg=f"{name} differs across ranks")


def test_two_process_sampling_shards_and_merges_one_datalist(prepared, tmp_path):
    """multi_gpu_inference.yaml: 2 processes each draw half of the masks; rank 0 merges one datalist with every id once."""
    from cmrsynth.benchmark import untrained_generator

    untrained_generator(tmp_path / "gen", seed=0)  # convolutional: its weights draw 32x32 slices too
    files = json.dumps([str(IMAGES / "configs" / c) for c in [*INFER, "multi_gpu_inference.yaml"]])
    out = tmp_path / "images"
    overrides = override_args({"mask_datalist": str(prepared / "datalist.json"), "mask_key": "test", "output_dir": str(out),
                               "num_inference_steps": 2, "max_images": 7, "image_size": 32})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--bundle_root", str(tmp_path / "gen"), "--config_file", files, *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    data = json.loads((out / "datalist.json").read_text())
    assert [e["synthetic_id"] for e in data["training"]] == [f"syn{i:05d}" for i in range(7)]
    assert data["summary"]["generated"] == 7 and data["summary"]["shards"] == 2
    assert all((out / e["image"]).is_file() for e in data["training"]) and (out / "samples.png").is_file()
    assert not list(tmp_path.glob("images.shard*")), "shards are removed after the merge"
    real = json.loads((prepared / "datalist.json").read_text())["test"][:7]
    for e, r in zip(data["training"], real):
        np.testing.assert_array_equal(np.asanyarray(nib.load(out / e["label"]).dataobj),
                                      np.asanyarray(nib.load(prepared / r["label"]).dataobj))


def test_dp_training_overlay_reports_epsilon_to_mlflow_and_checkpoints_the_accountant(prepared, tmp_path):
    from mlflow.tracking import MlflowClient

    n = len(json.loads((prepared / "datalist.json").read_text())["training"])
    run_bundle(IMAGES, TRAIN + ["dp_train.yaml"], tmp_path,
               _tiny(dataset_dir=str(prepared), max_epochs=2, dp_target_epsilon=8.0, dp_delta=1.0 / (2 * n), dp_epochs=4),
               extra_args=["--tracking", "mlflow"], env={"MLFLOW_TRACKING_URI": ""})
    state = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=False)
    assert state["dp"]["history"], "the accountant's steps are checkpointed"
    client = MlflowClient(f"sqlite:///{tmp_path / 'eval' / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name == "ddpm_cmr"]
    [run] = client.search_runs([exp.experiment_id])
    assert 0 < run.data.metrics["dp_epsilon"] <= 8.0


def test_dp_fine_tuning_starts_from_public_weights_spends_its_budget_and_resumes(prepared, tmp_path):
    """dp_pretrained.yaml: the run starts from the pre-trained EMA weights (learning rate 0 keeps them exactly),
    epsilon never exceeds its target, and a resumed run keeps counting from its own checkpoint."""
    from cmrsynth.dp import budget_spent

    public = tmp_path / "public"
    run_bundle(IMAGES, TRAIN, public, _tiny(dataset_dir=str(prepared), max_epochs=1))
    pretrained = torch.load(public / "models" / "best_ema.pt", weights_only=True)["ema"]
    n = len(json.loads((prepared / "datalist.json").read_text())["training"])
    dp = _tiny(dataset_dir=str(prepared), max_epochs=1, learning_rate=0.0, dp_target_epsilon=8.0, dp_delta=1.0 / (2 * n),
               dp_epochs=4, pretrained=str(public / "models" / "best_ema.pt"))
    root = tmp_path / "dp"
    overlays = TRAIN + ["dp_train.yaml", "dp_pretrained.yaml"]
    run_bundle(IMAGES, overlays, root, dp)
    first = torch.load(root / "models" / "checkpoint_final.pt", weights_only=True)
    for k, v in pretrained.items():
        if k != "n_averaged":  # the EMA's update count goes on from the pretrained one
            torch.testing.assert_close(first["ema"][k], v)
    run_bundle(IMAGES, overlays, root, {**dp, "max_epochs": 2, "pretrained": str(tmp_path / "gone.pt")})  # resume: unused
    second = torch.load(root / "models" / "checkpoint_final.pt", weights_only=True)
    spent = [budget_spent(state["dp"], 1.0 / (2 * n)) for state in (first, second)]
    assert spent[1]["steps"] > spent[0]["steps"] and 0 < spent[0]["epsilon"] < spent[1]["epsilon"] <= 8.0


DISTILL = ["common.yaml", "train.yaml", "distill.yaml"]


def _student(bundle, teacher, root, prepared, **kw):
    run_bundle(bundle, DISTILL, root, _tiny(**{"dataset_dir": str(prepared), "teacher": str(teacher / "models" / "best_ema.pt"),
                                              "num_pairs": 12, "validation_pairs": 4, "pair_steps": 3, "max_epochs": 1, **kw}))
    return root


def test_reflow_students_draw_the_chain_in_one_step_each(prepared, tmp_path):
    """distill.yaml on a mask and an image teacher, then sample_pairs.yaml on the two students at one step each."""
    teachers = {}
    for name, bundle in (("mg", MASKS), ("dd", IMAGES)):
        teachers[name] = tmp_path / name
        run_bundle(bundle, TRAIN, teachers[name], _tiny(dataset_dir=str(prepared), max_epochs=1))
    mask_student = _student(MASKS, teachers["mg"], tmp_path / "mg_student", prepared)
    image_student = _student(IMAGES, teachers["dd"], tmp_path / "dd_student", prepared)
    pairs = torch.load(image_student / "pairs" / "teacher_pairs.pt", weights_only=True)
    assert pairs["noise"].shape == (16, 1, 32, 32) and pairs["mask"].shape == (16, 32, 32) and pairs["sampler"]["nfe"] == 3
    assert pairs["validation_start"] == 12  # the last 4 drawn on the validation patients' masks
    assert torch.load(mask_student / "pairs" / "teacher_pairs.pt", weights_only=True)["class"].shape == (16,)
    written = (image_student / "pairs" / "teacher_pairs.pt").stat().st_mtime_ns
    _student(IMAGES, teachers["dd"], image_student, prepared, max_epochs=2)  # resumes: the couplings are kept
    assert (image_student / "pairs" / "teacher_pairs.pt").stat().st_mtime_ns == written
    assert trainer_progress(image_student / "models" / "checkpoint_final.pt")["epoch"] == 2
    out = tmp_path / "chain"
    run_bundle(MASKS, ["common.yaml", "inference.yaml", "sample_pairs.yaml"], mask_student, _tiny(
        image_bundle=str(IMAGES), image_root=str(image_student), output_dir=str(out), num_pairs=6, batch_size=8,
        num_inference_steps=1, image_steps=1, timestep_spacing="trailing", image_overrides=_tiny(timestep_spacing="trailing"),
        keep_implausible=True))  # a one-epoch tiny mask generator draws no plausible mask
    d = json.loads((out / "datalist.json").read_text())
    summary = d["summary"]
    assert summary["mask"]["nfe"] == summary["image"]["nfe"] == 1 and summary["pairs_per_second"] > 0
    assert len(d["training"]) == summary["pairs"] == 6 and nib.load(out / d["training"][0]["image"]).shape == (32, 32)
    refused = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(mask_student), "--config_file",
                              json.dumps([str(MASKS / "configs" / c) for c in ("common.yaml", "inference.yaml", "sample_pairs.yaml")]),
                              *override_args(_tiny(image_bundle=str(IMAGES), image_root=str(image_student), num_pairs=2,
                                                   output_dir=str(tmp_path / "refused"), num_inference_steps=1, image_steps=1,
                                                   image_overrides=_tiny()))],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "only 0 plausible masks in" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "refused").exists()


def test_fm_cmr_reflow_student_and_a_missing_teacher(prepared, tmp_path):
    fm = tmp_path / "fm"
    run_bundle(FLOW, TRAIN, fm, _tiny(dataset_dir=str(prepared), max_epochs=1))
    student = _student(FLOW, fm, tmp_path / "fm_student", prepared)
    state = torch.load(student / "models" / "best_ema.pt", weights_only=True)
    assert state["card"]["objective"] == "flow_matching"
    run_bundle(FLOW, INFER, student, _tiny(mask_datalist=str(prepared / "datalist.json"), mask_key="test", num_inference_steps=1))
    assert json.loads((student / "eval" / "images" / "datalist.json").read_text())["summary"]["nfe"] == 1
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(tmp_path / "orphan"), "--config_file",
           json.dumps([str(FLOW / "configs" / c) for c in DISTILL]),
           *override_args(_tiny(dataset_dir=str(prepared), teacher=str(tmp_path / "none.pt")))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "none.pt: teacher generator not found" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and not (tmp_path / "orphan" / "pairs").exists()


CONSISTENCY = ["common.yaml", "train.yaml", "consistency.yaml"]


def test_consistency_students_resume_with_their_target_and_sample_in_one_step(prepared, tmp_path):
    """consistency.yaml on a mask and an image teacher: 2 iterations, 2 more resumed (the target network continues
    from the checkpoint), then the bundle's own inference.yaml at one DDIM step (two on the trailing grid)."""
    students = {}
    for bundle in (MASKS, IMAGES):
        teacher, student = tmp_path / bundle.name, tmp_path / f"{bundle.name}_student"
        run_bundle(bundle, TRAIN, teacher, _tiny(dataset_dir=str(prepared), max_epochs=1))
        cd = _tiny(dataset_dir=str(prepared), teacher=str(teacher / "models" / "best_ema.pt"), cd_steps=4, epoch_length=2,
                   max_epochs=1)
        run_bundle(bundle, CONSISTENCY, student, cd)
        first = torch.load(student / "models" / "checkpoint_final.pt", weights_only=True)
        assert trainer_progress(student / "models" / "checkpoint_final.pt") == {"epoch": 1, "iteration": 2}
        assert (student / "models" / "best_ema.pt").is_file()  # validated against the teacher's solutions
        assert int(first["target"]["n_averaged"]) == 3  # the teacher's weights, then one update per step
        run_bundle(bundle, CONSISTENCY, student, {**cd, "max_epochs": 2})
        second = torch.load(student / "models" / "checkpoint_final.pt", weights_only=True)
        assert trainer_progress(student / "models" / "checkpoint_final.pt") == {"epoch": 2, "iteration": 4}
        assert int(second["target"]["n_averaged"]) == 5  # resumed from the checkpoint, not restarted from the teacher
        students[bundle.name] = student
    run_bundle(MASKS, INFER, students["mask_generator"], _tiny(per_class=1, num_inference_steps=1, keep_implausible=True))
    assert json.loads((students["mask_generator"] / "eval" / "masks" / "datalist.json").read_text())["summary"]["nfe"] == 1
    run_bundle(IMAGES, INFER, students["ddpm_cmr"], _tiny(mask_datalist=str(prepared / "datalist.json"), mask_key="test",
                                                          max_images=2, num_inference_steps=2, timestep_spacing="trailing"))
    assert json.loads((students["ddpm_cmr"] / "eval" / "images" / "datalist.json").read_text())["summary"]["nfe"] == 2
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(students["ddpm_cmr"]), "--config_file",
           json.dumps([str(IMAGES / "configs" / c) for c in CONSISTENCY]),
           *override_args(_tiny(dataset_dir=str(prepared), teacher=str(tmp_path / "none.pt"), max_epochs=3))]
    proc = subprocess.run(cmd, capture_output=True, text=True)  # a resumed run needs its teacher too
    assert proc.returncode == 2 and "none.pt: teacher generator not found" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_ldm_cmr_consistency_student_keeps_the_teachers_codec(prepared, tmp_path):
    ldm, student = tmp_path / "ldm", tmp_path / "ldm_student"
    tiny = _tiny(autoencoder_channels=[8, 16], dataset_dir=str(prepared))
    stage2 = ["common.yaml", "train.yaml", "train_diffusion.yaml"]
    run_bundle(LATENT, ["common.yaml", "train_autoencoder.yaml"], ldm, {**tiny, "max_epochs": 1, "adversarial_warmup": 2})
    run_bundle(LATENT, stage2, ldm, {**tiny, "max_epochs": 1})
    run_bundle(LATENT, [*stage2, "consistency.yaml"], student, {**tiny, "teacher": str(ldm / "models" / "best_ema.pt"),
                                                                "cd_steps": 4, "epoch_length": 2, "max_epochs": 1})
    taught = torch.load(student / "models" / "best_ema.pt", weights_only=True)["codec"]
    teacher = torch.load(ldm / "models" / "best_ema.pt", weights_only=True)["codec"]
    assert torch.equal(taught["scale_factor"], teacher["scale_factor"])
    run_bundle(LATENT, INFER, student, {**tiny, "mask_datalist": str(prepared / "datalist.json"), "mask_key": "test",
                                        "max_images": 2, "num_inference_steps": 1})
    assert json.loads((student / "eval" / "images" / "datalist.json").read_text())["summary"]["nfe"] == 1

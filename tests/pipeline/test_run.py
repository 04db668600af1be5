"""Unit tests of cmrsynth.pipeline.run that need no bundle run (the whole pipeline: tests/integration)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cmrsynth.pipeline.run import Pipeline, Request, cohort_fingerprint


def _cohort(root):
    (root / "patient001").mkdir(parents=True)
    (root / "patient001" / "image.nii.gz").write_bytes(b"voxels")
    (root / "patient001" / "Info.cfg").write_text("Group: NOR\n")
    return root


def test_a_copied_cohort_with_new_modification_times_keeps_its_fingerprint(tmp_path):
    source = _cohort(tmp_path / "a")
    copy = tmp_path / "b"
    shutil.copytree(source, copy)
    os.utime(copy / "patient001" / "image.nii.gz", (1, 1))
    assert cohort_fingerprint(copy) == cohort_fingerprint(source)


def test_changed_contents_or_names_change_the_fingerprint(tmp_path):
    cohort = _cohort(tmp_path / "a")
    before = cohort_fingerprint(cohort)
    (cohort / "patient001" / "image.nii.gz").write_bytes(b"voxelz")
    changed = cohort_fingerprint(cohort)
    (cohort / "patient001" / "Info.cfg").rename(cohort / "patient001" / "info.cfg")
    assert len({before, changed, cohort_fingerprint(cohort)}) == 3


def test_the_fingerprint_does_not_depend_on_where_the_cohort_lies(tmp_path):
    assert cohort_fingerprint(_cohort(tmp_path / "x" / "a")) == cohort_fingerprint(_cohort(tmp_path / "y" / "b"))


def test_a_run_folder_beside_a_datalist_is_not_part_of_its_cohort(tmp_path):
    cohort = _cohort(tmp_path / "a")
    datalist = cohort / "datalist.json"
    datalist.write_text("{}")
    before = cohort_fingerprint(datalist, exclude=cohort / "run")
    (cohort / "run" / "models").mkdir(parents=True)
    (cohort / "run" / "models" / "checkpoint.pt").write_bytes(b"weights that change on every resume")
    assert cohort_fingerprint(datalist, exclude=cohort / "run") == before


class _RecordingRunner:
    """Stands in for the StageRunner: keeps the settings each stage would hash."""

    def __init__(self):
        self.settings = {}

    def run(self, name, settings, after, folders, job):
        self.settings[name] = settings
        return {}


def _report_settings(tmp_path, real_slices: bool) -> dict:
    """What the report stage hashes (report() reads each generator's samples.png beside its synthetic datalist)."""
    pipeline = Pipeline(Request(out=tmp_path, real_slices_in_report=real_slices))
    pipeline.runner = _RecordingRunner()
    images = {n: {"synthetic": Path("x") / n / "datalist.json"} for n in pipeline.names}
    pipeline.report({"sampling": {}}, images, Path("masks") / "datalist.json")
    return pipeline.runner.settings["report"]


def test_leaving_real_slices_out_changes_the_report_hash_and_nothing_else(tmp_path):
    # a rerun with --no-real-slices must not skip the report as up to date and keep the real images in it; the same
    # request must keep its hash (a finished report is not redone)
    shown = _report_settings(tmp_path, True)
    assert _report_settings(tmp_path, True) == shown
    assert _report_settings(tmp_path, False) == {**shown, "real_slices": False}


def _training_overrides(tmp_path, preset: str) -> dict:
    """The overrides each generator's training stage would run with (the shipped phantom bundles installed)."""
    from cmrsynth.pipeline.presets import GENERATORS

    pipeline = Pipeline(Request(out=tmp_path, preset=preset, sampling="teacher"))
    pipeline.runner = _RecordingRunner()
    for name in ("ddpm_cmr", "fm_cmr"):
        pipeline.train(GENERATORS[name])
    return {name: s["overrides"] for name, s in pipeline.runner.settings.items()}


def test_ddpm_cmr_starts_from_the_phantom_weights_in_every_preset_and_trains_few_private_steps(tmp_path):
    # the audited private default: public pre-training, then 6 x 200 private steps on cpu64; fm_cmr is not on it (it
    # leaked as much from the same start, privacy_audit docs)
    trained = _training_overrides(tmp_path, "cpu64")
    assert trained["ddpm_cmr.train"]["pretrained"].endswith("zoo/ddpm_cmr/models/best_ema.pt")
    assert (tmp_path / "zoo" / "ddpm_cmr" / "models" / "best_ema.pt").is_file()
    assert trained["ddpm_cmr.train"]["max_epochs"] == 6
    assert "pretrained" not in trained["fm_cmr.train"] and trained["fm_cmr.train"]["max_epochs"] == 15
    demo = _training_overrides(tmp_path / "demo", "demo")
    assert all("pretrained" in o for o in demo.values())


def test_the_data_card_says_where_each_training_step_started_and_its_private_steps(tmp_path):
    import torch

    from cmrsynth.pipeline.presets import GENERATORS

    pipeline = Pipeline(Request(out=tmp_path, preset="demo", sampling="teacher"))
    for name in ("ddpm_cmr", "fm_cmr", "ldm_cmr"):  # what each training stage leaves (the trainer's state)
        (tmp_path / name / "models").mkdir(parents=True)
        torch.save({"trainer": {"iteration": 100, "epoch_length": 50}}, tmp_path / name / "models" / "checkpoint_final.pt")
    # the demo uses ldm_cmr's autoencoder as the zoo installs it: weights, no trainer state
    (tmp_path / "ldm_cmr" / "models" / "autoencoder").mkdir()
    torch.save({"autoencoder": {}}, tmp_path / "ldm_cmr" / "models" / "autoencoder" / "checkpoint_final.pt")
    shipped = "the shipped phantom weights (public, procedural), then 100 steps on the private cohort"
    assert pipeline.training_words(GENERATORS["ddpm_cmr"]) == shipped
    assert pipeline.training_words(GENERATORS["ldm_cmr"]) == (
        f"autoencoder: the shipped phantom weights as they are (no private data); latent: {shipped}")
    cpu64 = Pipeline(Request(out=tmp_path, preset="cpu64", sampling="teacher"))
    assert cpu64.training_words(GENERATORS["fm_cmr"]) == "from scratch, 100 steps on the private cohort"
    assert cpu64.training_words(GENERATORS["ddpm_cmr"]) == shipped

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
"""Each generator bundle's metadata.json is its contract: the network its configs build must honour it."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigParser

from cmrsynth.labels import CHANNEL_DEF
from tests.conftest import REPO

BUNDLES = ["mask_generator", "ddpm_cmr", "fm_cmr", "ldm_cmr"]
IMAGE_GENERATORS = ["ddpm_cmr", "fm_cmr", "ldm_cmr"]
REQUIRED = ("version", "changelog", "monai_version", "pytorch_version", "required_packages_version", "name", "task",
            "description", "authors", "copyright", "data_source", "intended_use", "references", "network_data_format")


def _parser(bundle: str, *extra: str) -> ConfigParser:
    parser = ConfigParser()
    files = [REPO / "bundles" / bundle / "configs" / f for f in ("common.yaml", *extra)]
    parser.read_config([str(f) for f in files])
    parser["bundle_root"] = str(REPO / "bundles" / bundle)
    return parser


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_is_filled(bundle):
    meta = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    for key in REQUIRED:
        assert meta.get(key), f"{bundle}: metadata field {key!r} is empty"
    assert "cmrsynth" in meta["required_packages_version"]
    assert meta["label_classes"] == CHANNEL_DEF
    for name, spec in meta["network_data_format"]["inputs"].items():
        assert spec["value_range"], f"{bundle}: input {name} has no value_range"


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("preset", [(), ("reference.yaml",)])
def test_network_matches_metadata(bundle, preset):
    meta = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())["network_data_format"]
    parser = _parser(bundle, *preset)
    parser["device"] = "$torch.device('cpu')"
    net, generator = parser.get_parsed_content("network"), parser.get_parsed_content("generator")
    size = parser.get_parsed_content("image_size")
    assert size == (128 if preset else meta["inputs"]["mask" if "mask" in meta["inputs"] else "image"]["spatial_shape"][0])
    channels, side, _ = generator.codec.latent_shape((generator.data_channels, size, size))  # what the network sees
    assert channels == meta["inputs"]["image"]["num_channels"]
    assert preset or side == meta["inputs"]["image"]["spatial_shape"][0]
    x = torch.zeros(1, channels, side, side)
    mask = torch.zeros(1, 4, size, size) if "mask" in meta["inputs"] else None
    labels = torch.tensor([3]) if "class_labels" in meta["inputs"] else None
    with torch.no_grad():
        out = net(x, torch.tensor([10]), mask=mask, class_labels=labels)
    assert out.shape == (1, meta["outputs"]["pred"]["num_channels"], side, side)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_configs_parse_and_name_the_tracked_engines(bundle):
    stages = [("train.yaml",)] + ([("train_autoencoder.yaml",), ("train.yaml", "train_diffusion.yaml")] if bundle == "ldm_cmr" else [])
    for stage in stages:
        parser = _parser(bundle, *stage)
        for id_ in ("train#trainer", "train#handlers", "validate#evaluator", "validate#handlers", "initialize", "run"):
            assert id_ in parser, f"{bundle} {stage}: {id_} missing (MONAI --tracking needs it)"
    parser = _parser(bundle, "train.yaml")
    assert parser["experiment_name"] == bundle
    multi = _parser(bundle, "train.yaml", "multi_gpu_train.yaml")
    assert "DistributedSampler" in str(multi["train#sampler"])
    stats = multi["train#handlers"][4]
    assert stats["_target_"] == "StatsHandler" and "_disabled_" in stats


@pytest.mark.parametrize("bundle, config", [(b, "train.yaml") for b in [*BUNDLES, "seg_utility"]] + [("ldm_cmr", "train_autoencoder.yaml")])
def test_best_checkpoint_keeps_the_best_validation_score(bundle, config):
    """CheckpointSaver keeps the largest score unless told the metric is an error: its sign must follow the
    evaluator's metric_cmp_fn (a lower-is-better val_mse once made best_ema.pt keep the worst weights)."""
    parser = _parser(bundle, config)
    compare = parser.get("validate#evaluator#metric_cmp_fn")
    lower_is_better = bool(compare and ConfigParser({"f": compare}).get_parsed_content("f")(1.0, 2.0))
    savers = [h for h in parser["validate#handlers"] if isinstance(h, dict) and h.get("save_key_metric")]
    assert savers, f"{bundle}: no best-metric checkpoint"
    for saver in savers:
        assert bool(saver.get("key_metric_negative_sign", False)) == lower_is_better, saver


@pytest.mark.parametrize("name", ["multi_gpu_train.yaml", "reference.yaml", "logging.conf"])
def test_generator_bundles_share_their_common_configs(name):
    """Zoo bundles are self-contained, so these files are copies: they must stay byte-identical."""
    texts = {b: (REPO / "bundles" / b / "configs" / name).read_text() for b in BUNDLES}
    assert len(set(texts.values())) == 1, f"{name} differs between {sorted(texts)}"


def test_image_generators_share_their_sharded_sampling_overlay():
    texts = {b: (REPO / "bundles" / b / "configs" / "multi_gpu_inference.yaml").read_text() for b in ("ddpm_cmr", "fm_cmr", "ldm_cmr")}
    assert len(set(texts.values())) == 1


@pytest.mark.parametrize("name", ["train.yaml", "inference.yaml"])
def test_image_generators_differ_only_in_their_objective(name):
    """ddpm_cmr, fm_cmr and ldm_cmr share training and inference configs byte for byte (ldm_cmr's latent space is
    an overlay and a codec); ddpm_cmr and fm_cmr share every common.yaml key but the objective's and its sampling
    defaults."""
    texts = {b: (REPO / "bundles" / b / "configs" / name).read_text() for b in IMAGE_GENERATORS}
    assert len(set(texts.values())) == 1, f"{name} differs between {sorted(texts)}"
    common = {b: ConfigParser.load_config_file(str(REPO / "bundles" / b / "configs" / "common.yaml")) for b in ("ddpm_cmr", "fm_cmr")}
    objective_keys = {"objective", "scheduler", "num_train_timesteps", "prediction_type", "sigma", "coupling", "sampler",
                      "num_inference_steps", "timestep_spacing", "experiment_name", "generator"}
    for key in (set(common["ddpm_cmr"]) | set(common["fm_cmr"])) - objective_keys:
        assert common["ddpm_cmr"].get(key) == common["fm_cmr"].get(key), f"common.yaml key {key!r} differs"
    strip = lambda g: {k: v for k, v in g.items() if k != "name"}  # noqa: E731
    assert strip(common["ddpm_cmr"]["generator"]) == strip(common["fm_cmr"]["generator"])


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_generator_bundle_defines_the_contract(bundle):
    from cmrsynth.generative import Generator

    parser = _parser(bundle, "inference.yaml")
    parser["device"] = "$torch.device('cpu')"
    generator = parser.get_parsed_content("generator")
    assert isinstance(generator, Generator) and generator.name == bundle
    generator.check_sampler(generator.sampler)


def test_distillation_overlays_differ_only_where_the_bundles_do():
    """distill.yaml is one recipe: the image generators' copies parse to the same config; the mask generator's differs
    only in having no mask condition."""
    load = lambda b: ConfigParser.load_config_file(str(REPO / "bundles" / b / "configs" / "distill.yaml"))  # noqa: E731
    ddpm, fm, masks, latent = load("ddpm_cmr"), load("fm_cmr"), load("mask_generator"), load("ldm_cmr")
    assert ddpm == fm and {k: v for k, v in latent.items() if k != "prepare_codec"} == ddpm  # ldm: the teacher's codec
    differ = {k for k in ddpm if ddpm[k] != masks.get(k)}
    assert differ == {"make_pairs", "train#prepare_batch", "validate#prepare_batch"}
    for key in differ:
        assert {k: v for k, v in masks[key].items() if k != "mask_key"} == {k: v for k, v in ddpm[key].items() if k != "mask_key"}
        assert masks[key]["mask_key"] is None and ddpm[key]["mask_key"] == "label"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_distillation_overlay_builds_a_student_of_the_teachers_kind(bundle):
    parser = _parser(bundle, "train.yaml", *(["train_diffusion.yaml"] if bundle == "ldm_cmr" else []), "distill.yaml")
    parser["device"] = "$torch.device('cpu')"
    assert parser.get_parsed_content("pretrained") is None and parser.get_parsed_content("teacher") is None
    prepare = parser.get_parsed_content("train#prepare_batch")
    assert type(prepare).__name__ == "CoupledPrepareBatch" and prepare.objective.name == parser.get_parsed_content("generator").objective.name


CONSISTENCY_BUNDLES = ["mask_generator", "ddpm_cmr", "ldm_cmr"]  # the DDPM-objective generators


def test_consistency_overlays_differ_only_where_the_bundles_do():
    """consistency.yaml is one recipe: ldm_cmr's copy adds the teacher's codec; the mask generator's trains on its
    masks (image_key label) with no mask condition."""
    load = lambda b: ConfigParser.load_config_file(str(REPO / "bundles" / b / "configs" / "consistency.yaml"))  # noqa: E731
    ddpm, masks, latent = load("ddpm_cmr"), load("mask_generator"), load("ldm_cmr")
    assert {k: v for k, v in latent.items() if k != "prepare_codec"} == ddpm
    differ = {k for k in ddpm if ddpm[k] != masks.get(k)}
    assert differ == {"train#prepare_batch", "validate#prepare_batch"} and set(masks) == set(ddpm)
    for key in differ:
        keys = lambda c: {k: v for k, v in c.items() if k not in ("image_key", "mask_key")}  # noqa: E731
        assert keys(masks[key]) == keys(ddpm[key])
        assert (masks[key]["image_key"], masks[key]["mask_key"]) == ("label", None) and ddpm[key]["mask_key"] == "label"


@pytest.mark.parametrize("bundle", CONSISTENCY_BUNDLES)
def test_consistency_overlay_builds_a_student_and_target_of_the_teachers_kind(bundle, tmp_path):
    stage = ("train.yaml", *(["train_diffusion.yaml"] if bundle == "ldm_cmr" else []), "consistency.yaml")
    parser = _parser(bundle, *stage)
    parser["device"] = "$torch.device('cpu')"
    assert parser.get_parsed_content("teacher") is None and parser.get("pretrained") == "@teacher"
    generator = parser.get_parsed_content("generator")
    codec = {"codec": generator.codec.state_dict()} if isinstance(generator.codec, torch.nn.Module) else {}
    torch.save({"ema": generator.network.state_dict(), "card": generator.card.state_dict(), **codec}, tmp_path / "teacher.pt")
    parser["teacher"] = str(tmp_path / "teacher.pt")
    prepare, validate = parser.get_parsed_content("train#prepare_batch"), parser.get_parsed_content("validate#prepare_batch")
    assert type(prepare).__name__ == "ConsistencyPrepareBatch" and type(validate).__name__ == "TeacherSolutionPrepareBatch"
    assert prepare.steps == validate.steps == 50 and prepare.times[0] == 999 and 499 in prepare.times  # 1- and 2-step times
    assert prepare.teacher.objective.describe() == generator.objective.describe() and validate.seed == 1234
    assert prepare.target.n_averaged.item() == 1 and not any(p.requires_grad for p in prepare.target.parameters())
    assert type(parser.get_parsed_content("loss")).__name__ == "PseudoHuberLoss"
    assert parser.get_parsed_content("checkpoint")["target"] is prepare.target


def test_public_start_needs_the_public_weights(tmp_path):
    """ddpm_cmr's public_start.yaml (private by default: public weights, then 6 x 200 private steps): a fresh run
    without --pretrained is refused by its input check, naming the overlay; a resumed run needs them no more."""
    parser = _parser("ddpm_cmr", "train.yaml", "public_start.yaml")
    parser["ckpt_dir"] = str(tmp_path / "models")
    assert parser.get_parsed_content("max_epochs") == 6 and parser["pretrained"] is None
    [missing] = parser.get_parsed_content("check_inputs#files")
    assert missing["path"] == "None" and "public_start.yaml" in missing["problem"]
    parser["pretrained"] = str(tmp_path / "public" / "best_ema.pt")
    assert parser.get_parsed_content("check_inputs#files", lazy=False)[0]["path"] == parser["pretrained"]
    (tmp_path / "models").mkdir()
    torch.save({}, tmp_path / "models" / "checkpoint_epoch=1.pt")
    assert parser.get_parsed_content("check_inputs#files", lazy=False) == []


def test_ldm_public_start_encodes_with_the_public_autoencoder(tmp_path):
    """ldm_cmr's public_start.yaml: the autoencoder is the public run's (beside --pretrained), never trained on the
    private cohort; a fresh run without either public file is refused naming both, a resumed run needs neither."""
    parser = _parser("ldm_cmr", "train.yaml", "train_diffusion.yaml", "public_start.yaml")
    parser["ckpt_dir"] = str(tmp_path / "models")
    parser["pretrained"] = str(tmp_path / "zoo" / "models" / "best_ema.pt")
    assert parser.get_parsed_content("max_epochs") == 6
    assert parser.get_parsed_content("public_autoencoder") == str(tmp_path / "zoo" / "models" / "autoencoder" / "checkpoint_final.pt")
    files = parser.get_parsed_content("check_inputs#files")
    assert [f["path"] for f in files] == [parser["pretrained"], parser.get_parsed_content("public_autoencoder")]
    assert "public_start.yaml" in files[1]["problem"]
    (tmp_path / "models").mkdir()
    torch.save({}, tmp_path / "models" / "checkpoint_epoch=1.pt")
    assert parser.get_parsed_content("check_inputs#files", lazy=False) == []
    parser["calibration_loader"] = None  # not read: the codec comes back with the run's own checkpoint
    assert parser.get_parsed_content("prepare_codec", lazy=False) is None

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
"""Few-step sampling benchmark: teacher samplers against reflow students, the whole (mask, image) chain.

For each setting (teachers at DDIM-50 / 10 / 1, students at 2 / 1 steps; with ddpm_cmr or fm_cmr, whose teacher
samples with Euler-10, as the image stage): the chain draws 1,000 pairs through
mask_generator's configs/sample_pairs.yaml; mask quality (plausibility, shape distances to the real test masks),
image quality on the real test masks (faithfulness, FD / KID by the real-only segmenter), synthetic-only Dice of a
segmenter trained on the 1,000 pairs, FLOPs per pair (and the paper's recipe's, its networks built from its
published configs), and, on a quiet machine, pairs per second at batch 64 and 256. The students are audited
like their teachers. Step counts are fixed; the wall time depends on the machine.

    bash scripts/train_fast_sampling_students.sh runs/bench14 runs/bench runs/acdc_cpu64/fm_cmr   # the students
    python scripts/benchmark_fast_sampling.py --stage quality   # any load
    python scripts/benchmark_fast_sampling.py --stage timing    # alone on the machine, 2 threads
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from cmrsynth.benchmark import (REPO, load_section, machine, prepared_acdc, replace_marked, score_fidelity, draw_images,
                                train_segmenter, write_benchmark)
from cmrsynth.bundle_run import run_bundle
from cmrsynth.masks import mean_pairwise_dice, shape_distances, shape_stats
from cmrsynth.pipeline.presets import GENERATORS


MASKS, DOCS = REPO / "bundles" / "mask_generator", REPO / "docs"
JSON, FIGURE = DOCS / "fast_sampling.json", DOCS / "fast_sampling.png"
SEGMENTER_STEPS = 700  # the seg_utility benchmark's protocol
#: the research code's recipe (arXiv 2603.04340, github.com/vlbthambawita/SynCMRI): mask_generation/main.py and
#: diffusion_DDPM/main.py (a diffusers UNet2DModel, expressed block for block as MONAI's DiffusionModelUNet), 1000
#: DDPM steps each; counted at 64x64 like ours
PAPER_NETWORKS = {
    "mask": dict(spatial_dims=2, in_channels=4, out_channels=4, channels=(64, 128, 256, 512),
                 attention_levels=(False, False, True, True), num_res_blocks=2, num_head_channels=32),
    "image": dict(spatial_dims=2, in_channels=5, out_channels=1, channels=(128, 128, 256, 256, 512, 512),
                  attention_levels=(False, False, False, False, True, False), num_res_blocks=2, num_head_channels=8,
                  norm_eps=1e-5),
}
PAPER_STEPS = 1000


@dataclass
class Setting:
    """One way to draw the chain: which weights (teachers or students), steps and timestep spacing of both stages,
    and the image generator (ddpm_cmr samples with DDIM, fm_cmr with Euler)."""

    label: str
    weights: str  # "teachers" or "students"
    steps: int
    spacing: str = "linspace"
    segmenter: bool = True
    image: str = "ddpm_cmr"
    image_steps: int | None = None  # None: as the mask stage
    reference: str = "teacher_ddim50"  # the teacher chain whose quality a student setting must keep (aims)

    @property
    def image_sampler(self) -> str:
        return DEFAULT_SAMPLER[self.image]

    @property
    def nfe_image(self) -> int:
        return self.image_steps or self.steps


#: each image generator's deterministic sampler (its bundle's default), the one its student was distilled from
DEFAULT_SAMPLER = {"ddpm_cmr": "ddim", "fm_cmr": "euler"}
SETTINGS = {
    "teacher_ddim50": Setting("teachers, DDIM-50 (the default today)", "teachers", 50),
    "teacher_ddim10": Setting("teachers, DDIM-10", "teachers", 10, segmenter=False),
    "teacher_ddim1": Setting("teachers, DDIM-1 (no distillation; sanity)", "teachers", 1, segmenter=False),
    "student_2": Setting("reflow students, 2 steps", "students", 2, "trailing"),
    "student_1": Setting("reflow students, 1 step", "students", 1, "trailing"),
    # fm_cmr as the image stage: its own default sampler is Euler-10
    "fm_teacher_euler10": Setting("fm_cmr chain: teachers, mask DDIM-50 + image Euler-10 (the defaults)", "teachers", 50,
                                  image="fm_cmr", image_steps=10, reference="fm_teacher_euler10"),
    "fm_teacher_10": Setting("fm_cmr chain: teachers, DDIM-10 + Euler-10", "teachers", 10, image="fm_cmr",
                             segmenter=False, reference="fm_teacher_euler10"),
    "fm_student_2": Setting("fm_cmr chain: reflow students, 2 steps", "students", 2, "trailing", image="fm_cmr",
                            reference="fm_teacher_euler10"),
    "fm_student_1": Setting("fm_cmr chain: reflow students, 1 step", "students", 1, "trailing", image="fm_cmr",
                            reference="fm_teacher_euler10"),
}


def roots(teachers: Path, work: Path, fm_teacher: Path) -> dict[str, dict[str, Path]]:
    """Run folders of the mask and image generators, teachers and students."""
    return {"teachers": {"mask": teachers / "mask_generator_signed_distance", "ddpm_cmr": teachers / "ddpm_cmr_private",
                         "fm_cmr": fm_teacher},
            "students": {"mask": work / "mask_generator_student", "ddpm_cmr": work / "ddpm_cmr_student",
                         "fm_cmr": work / "fm_cmr_student"}}


def available(folders: dict[str, dict[str, Path]]) -> list[str]:
    """The settings whose mask and image weights exist (a note for each one left out)."""
    keys = []
    for key, setting in SETTINGS.items():
        need = [folders[setting.weights][stage] / "models" / "best_ema.pt" for stage in ("mask", setting.image)]
        missing = [str(p) for p in need if not p.is_file()]
        if missing:
            print(f"{key}: left out, {', '.join(missing)} not found")
        else:
            keys.append(key)
    return keys


def chain(setting: Setting, folders: dict[str, Path], out: Path, pairs: int, batch: int, seed: int, threads: int) -> dict:
    """mask_generator's sample_pairs.yaml with this setting into ``out`` (skipped when done); its summary."""
    if not (out / "datalist.json").is_file():
        run_bundle(MASKS, ["common.yaml", "inference.yaml", "sample_pairs.yaml"], folders["mask"], {
            "image_bundle": str(REPO / "bundles" / setting.image), "image_root": str(folders[setting.image]),
            "image_sampler": setting.image_sampler, "output_dir": str(out),
            "num_pairs": pairs, "batch_size": batch, "num_inference_steps": setting.steps, "image_steps": setting.nfe_image,
            "timestep_spacing": setting.spacing, "image_timestep_spacing": setting.spacing, "seed": seed},
            log=out.parent / f"{out.name}.log", env={"OMP_NUM_THREADS": str(threads)})
    return json.loads((out / "datalist.json").read_text())["summary"]


def mask_quality(datalist: Path, real_test: list[dict]) -> dict:
    """The chain's masks against the real test masks: shape-statistic distances (all slices) and diversity."""
    entries = json.loads(datalist.read_text())["training"]
    masks = [np.asanyarray(nib.load(datalist.parent / e["label"]).dataobj).astype(np.int64) for e in entries]
    spacing = real_test[0]["spacing"][0]
    distances = shape_distances([("slices", shape_stats(e["mask"], spacing)) for e in real_test],
                                [("slices", shape_stats(m, spacing)) for m in masks])["all"]
    return {"shape_wasserstein": distances, "diversity_mean_pairwise_dice": mean_pairwise_dice(np.stack(masks)),
            "real_test_diversity": mean_pairwise_dice(np.stack([e["mask"] for e in real_test]))}


def image_quality(key: str, setting: Setting, folders: dict[str, Path], real: Path, scorer: Path, seed: int, threads: int) -> dict:
    """The image stage alone on the real test masks: faithfulness and FD / KID by the real-only segmenter."""
    overrides = {"sampler": setting.image_sampler, "num_inference_steps": setting.nfe_image, "timestep_spacing": setting.spacing}
    out = folders["work"] / "images"
    datalist = draw_images(folders[setting.image], real, "test", out / key, seed, threads, setting.image, overrides)
    summary = json.loads(datalist.read_text())["summary"]
    return {"nfe": summary["nfe"], **score_fidelity(datalist, real, scorer, out / "fidelity" / key, seed, threads)}


def flops(folders: dict[str, Path], setting: Setting) -> dict:
    """FLOPs of one (mask, image) pair with this setting's steps per stage (``Generator.flops_per_sample``)."""
    from cmrsynth.generative import load_generator

    out = {}
    for stage, bundle, root, steps in (("mask", "mask_generator", folders["mask"], setting.steps),
                                       ("image", setting.image, folders[setting.image], setting.nfe_image)):
        generator = load_generator(REPO / "bundles" / bundle, root, checkpoint="best_ema.pt")
        out[stage] = generator.flops_per_sample(steps)
    return {**out, "pair": out["mask"] + out["image"]}


def paper_flops(size: int = 64) -> dict:
    """FLOPs of the paper's recipe per pair: each network evaluated once per step for 1000 steps (no weights needed)."""
    import torch
    from monai.networks.nets import DiffusionModelUNet
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    for stage, config in PAPER_NETWORKS.items():
        net = DiffusionModelUNet(**config).eval()
        x = torch.zeros(1, config["in_channels"], size, size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x, timesteps=torch.tensor([999]))
        out[stage] = {"parameters": sum(p.numel() for p in net.parameters()), "flops_per_evaluation": counter.get_total_flops(),
                      "steps": PAPER_STEPS, "flops": PAPER_STEPS * counter.get_total_flops()}
    return {**out, "pair": out["mask"]["flops"] + out["image"]["flops"], "image_size": size}


def quality_row(key: str, setting: Setting, ctx: dict) -> dict:
    """Everything but timing for one setting."""
    folders = {**ctx["roots"][setting.weights], "work": ctx["work"]}
    chain_dir = ctx["work"] / "chains" / key
    summary = chain(setting, folders, chain_dir, ctx["pairs"], 64, ctx["seed"], ctx["threads"])
    row = {"label": setting.label, "weights": setting.weights, "steps": setting.steps, "timestep_spacing": setting.spacing,
           "image_generator": setting.image, "image_sampler": setting.image_sampler, "image_steps": setting.nfe_image,
           "chain": {k: summary[k] for k in ("pairs", "masks_drawn", "mask_plausibility_rate", "mask", "image")},
           "masks": mask_quality(chain_dir / "datalist.json", ctx["real_test"]),
           "images": image_quality(key, setting, folders, ctx["real"], ctx["scorer"], ctx["seed"], ctx["threads"]),
           "flops": flops(folders, setting)}
    if setting.segmenter:
        row["segmenter"] = train_segmenter(ctx["work"] / "seg" / key, [{"datalist": str(chain_dir / "datalist.json"), "key": "training"}],
                                           ctx["real"], SEGMENTER_STEPS, ctx["seed"], ctx["threads"])
    print(f"{key}: quality done {time.strftime('%H:%M')}", flush=True)
    return row


def audits(ctx: dict) -> dict:
    """privacy_audit of each trained student through the generator contract, as their teachers were audited
    (privacy_audit's benchmark: 6 slices per patient); the reconstruction attack samples as the student is used, one
    step. The fm_cmr teacher's row is the ACDC cpu64 pipeline's audit of it, used only when that audit attacked this
    teacher (a pipeline run with fast sampling audits its student instead)."""
    from benchmark_privacy_audit import Recipe, audit

    work, data = ctx["work"], ctx["data"]
    out = {}
    for name, bundle, synthetic in (("ddpm_cmr_student", "ddpm_cmr", work / "chains" / "student_1" / "datalist.json"),
                                    ("fm_cmr_student", "fm_cmr", work / "chains" / "fm_student_1" / "datalist.json"),
                                    ("mask_generator_student", "mask_generator", None)):
        if not (work / name / "models" / "best_ema.pt").is_file() or (synthetic is not None and not synthetic.is_file()):
            continue
        recipe = Recipe(name, name, bundle=bundle, generator_overrides={"num_inference_steps": 1})
        out[name] = audit(work, recipe, name, data, synthetic, ctx["scorer"], ctx["threads"], 6)
    teachers = REPO / "bundles" / "privacy_audit" / "docs" / "benchmark.json"
    if teachers.is_file():
        rows = json.loads(teachers.read_text()).get("recipes", {})
        out["teachers"] = {k: rows[k]["audit"] for k in ("new_default", "mask_generator") if k in rows}
    fm_teacher = ctx["roots"]["teachers"]["fm_cmr"]
    record = fm_teacher.parent / "stages" / "audit.fm_cmr.json"
    attacked = json.loads(record.read_text())["settings"]["overrides"].get("generator_root") if record.is_file() else None
    if attacked and Path(attacked.replace("<run>", str(fm_teacher.parent))).resolve() == fm_teacher.resolve():
        # the pipeline records its run folder as <run>; the same members, non-members and slices as the students
        out.setdefault("teachers", {})["fm_cmr"] = json.loads((fm_teacher.parent / "privacy_audit" / "fm_cmr" / "audit.json").read_text())
        out["teachers"]["fm_cmr"].get("leakage", {}).pop("synthetic_to_train", None)
    return out


def coupling_errors(ctx: dict, held_out: int = 128) -> dict:
    """How far one and two steps land from the teacher's 50-step sample (DDIM; fm_cmr: Euler) of the same noise and
    conditions, on the student's validation couplings (never trained on): teacher against student, mean squared error
    in the objective's space."""
    out = {}
    for stage, bundle in (("mask", "mask_generator"), ("image", "ddpm_cmr"), ("fm_cmr", "fm_cmr")):
        folder = "mask" if stage == "mask" else bundle
        if not (ctx["roots"]["students"][folder] / "pairs" / "teacher_pairs.pt").is_file():
            continue
        items = validation_couplings(ctx["roots"]["students"][folder] / "pairs" / "teacher_pairs.pt", held_out)
        for weights in ("teachers", "students"):
            for steps, error in few_step_errors(bundle, ctx["roots"][weights][folder], items).items():
                out[f"{stage}/{weights}/{steps}"] = error
    return out


def validation_couplings(path: Path, held_out: int) -> list[dict]:
    """The first ``held_out`` validation couplings of a reflow student's ``teacher_pairs.pt`` (never trained on)."""
    from cmrsynth.generative import TeacherPairs

    pairs = TeacherPairs(path, "validation")
    return [pairs[i] for i in range(min(held_out, len(pairs)))]


def few_step_errors(bundle: str, root: Path, items: list[dict]) -> dict[int, dict]:
    """Mean squared error (objective space) of one and two deterministic trailing steps of the generator at ``root``
    (best_ema.pt) from each coupling's noise, against the teacher's 50-step sample of it."""
    import torch
    import torch.nn.functional as F

    from cmrsynth.generative import get_sampler, load_generator

    z, x = torch.stack([i["noise"] for i in items]), torch.stack([i["sample"] for i in items])
    mask = torch.stack([i["label"] for i in items]) if "label" in items[0] else None
    g = load_generator(REPO / "bundles" / bundle, root, checkpoint="best_ema.pt", overrides={"timestep_spacing": "trailing"})
    labels = torch.stack([i["class"] for i in items]) if g.classes.groups else None
    out = {}
    for steps in (1, 2):
        with torch.no_grad():
            y = get_sampler(g.sampler)(g.bind(mask, labels), z, g.objective.time_grid(steps))
        out[steps] = {"mse": F.mse_loss(y, x).item(), "couplings": len(items)}
    return out


#: reflow against consistency distillation, measured on the image stage: two students of one ddpm_cmr teacher (the
#: default, the privacy benchmark's public_6 row) trained for the same steps on the same teacher evaluations
#: (reflow: 640 couplings x 50 DDIM steps; consistency: 2,000 steps x batch 16, one teacher step each)
DISTILLATIONS = {"reflow": "ddpm_cmr_student", "consistency": "ddpm_cmr_consistency"}
PRIVACY_BENCHMARK = REPO / "bundles" / "privacy_audit" / "docs" / "benchmark.json"
TEACHER_RECIPE = "public_6"


def distillation_cost(log: Path, teacher_evaluations: int) -> dict:
    """Wall minutes (one thread) before the first training step (reflow: drawing the couplings) and of training,
    from a student's log, beside the teacher evaluations the method needed."""
    import re
    from datetime import datetime

    stamps = []
    for line in log.read_text().splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ - .*", line)
        if m:
            stamps.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"), "Epoch: 1/" in line))
    start, first_step, end = stamps[0][0], next(t for t, first in stamps if first), stamps[-1][0]
    return {"minutes_before_training": (first_step - start).total_seconds() / 60,
            "minutes_training": (end - first_step).total_seconds() / 60, "teacher_evaluations": teacher_evaluations}


def few_step_overrides(bundle: str) -> dict:
    """How the pipeline samples a bundle's few-step student, less its step count (DDIM bundles: the trailing grid)."""
    return {k: v for k, v in GENERATORS[bundle].student.items() if k != "num_inference_steps"}


def distillation_row(name: str, root: Path, steps: int, ctx: dict, masks: Path, segmenter: bool, bundle: str = "ddpm_cmr",
                     mask_key: str = "synthetic", folder: str = "distillations") -> dict:
    """Images of one generator at ``steps`` steps of its deterministic sampler on the masks of a datalist section (a
    few steps as the pipeline samples students, DDIM on the trailing grid; a bundle's default steps on its default
    grid), scored as the privacy benchmark scores its rows: fidelity by the real-only segmenter, and a segmenter
    trained on them alone."""
    out = ctx["work"] / folder / f"{name}_{steps}"
    grid = {} if steps == TEACHER_STEPS.get(bundle) else few_step_overrides(bundle)
    images = draw_images(root, masks, mask_key, out / "images", ctx["seed"] + 1, ctx["threads"], bundle,
                         {"ckpt_path": str(root / "models" / "best_ema.pt"), "num_inference_steps": steps, **grid})
    row = {"generator": name, "steps": steps,
           "fidelity": score_fidelity(images, ctx["real"], ctx["scorer"], out / "fidelity", ctx["seed"], ctx["threads"])}
    if segmenter:
        row["segmenter"] = train_segmenter(out / "seg", [{"datalist": str(images), "key": "training"}], ctx["real"],
                                           SEGMENTER_STEPS, ctx["seed"], ctx["threads"])
    print(f"{name} {steps} step(s): done {time.strftime('%H:%M')}", flush=True)
    return row


def compare_distillations(ctx: dict, teacher: Path, masks: Path, parallel: int) -> dict:
    """Reflow and consistency students of one teacher at 1 and 2 steps, the teacher itself at 1 and 2 steps (no
    distillation; fidelity only), and its DDIM-50 row from the privacy benchmark (same weights, masks and protocol);
    distances to the teacher's 50-step samples on the reflow student's validation couplings; what each cost."""
    import torch

    from cmrsynth.bundle_run import trainer_progress
    from cmrsynth.zoo import sha256

    work = ctx["work"]
    reference = json.loads(PRIVACY_BENCHMARK.read_text())["recipes"][TEACHER_RECIPE]
    if reference["mask_set"] != sha256(masks)[:12]:
        raise SystemExit(f"{masks}: not the mask set of the privacy benchmark's {TEACHER_RECIPE} row")
    roots = {"teacher": teacher, **{k: work / v for k, v in DISTILLATIONS.items()}}
    jobs = [(name, root, steps, name != "teacher") for name, root in roots.items() for steps in (1, 2)]
    with ThreadPoolExecutor(parallel) as pool:
        rows = list(pool.map(lambda job: distillation_row(job[0], job[1], job[2], ctx, masks, job[3]), jobs))
    rows.append({"generator": "teacher", "steps": 50, "from": f"privacy_audit benchmark, row {TEACHER_RECIPE}",
                 **{k: reference["images"][k] for k in ("fidelity", "segmenter")}})
    pairs = roots["reflow"] / "pairs" / "teacher_pairs.pt"
    made = torch.load(pairs, map_location="cpu", weights_only=True)["settings"]
    items = validation_couplings(pairs, 128)
    reflow, consistency = (trainer_progress(roots[k] / "models" / "checkpoint_final.pt") for k in ("reflow", "consistency"))
    batch = 16  # train.yaml's batch size; each consistency step takes one teacher step per sample
    return {"teacher": f"{teacher.name}/models/best_ema.pt", "mask_set": reference["mask_set"],
            "rows": {f"{r['generator']}_{r['steps']}": r for r in rows},
            "coupling_errors": {name: {str(steps): e for steps, e in few_step_errors("ddpm_cmr", root, items).items()}
                                for name, root in roots.items()},
            "training": {
                "reflow": {**reflow, "couplings": made["num_pairs"], "validation_couplings": made["validation_pairs"],
                           **distillation_cost(work / "ddpm_cmr_student.log", (made["num_pairs"] + made["validation_pairs"])
                                               * made["num_inference_steps"])},
                "consistency": {**consistency, "batch": batch,
                                **distillation_cost(work / "ddpm_cmr_consistency.log", consistency["iteration"] * batch)}}}


#: each image bundle's default number of sampler steps (fm_cmr Euler-10, ldm_cmr DDIM-50): its teacher's reference row
TEACHER_STEPS = {"fm_cmr": 10, "ldm_cmr": 50}


def student_rows(bundle: str) -> tuple[tuple[str, int, bool], ...]:
    """(generator, steps, segmenter) of an image-stage comparison: the teacher at its default steps and at 2 and 1
    (no distillation; fidelity only), the reflow student at 2 and 1."""
    return (("teacher", TEACHER_STEPS[bundle], True), ("teacher", 2, False), ("teacher", 1, False), ("reflow", 2, True),
            ("reflow", 1, True))


def compare_image_student(ctx: dict, bundle: str, teacher: Path, student: Path, teacher_audit: Path, audit_seed: int,
                          parallel: int, repeats: tuple[tuple[Path, Path, int], ...] = ()) -> dict:
    """An image bundle's reflow student against its teacher on the image stage alone, drawn on the real validation
    patients' masks (no mask generator needed; neither members nor test patients): fidelity, a segmenter on each row's
    images, distance to the teacher's 50-step sample on the student's validation couplings, FLOPs per slice, what the
    student cost, and the student audited as the pipeline samples it (2 steps) at the seed of the teacher's audit.
    ``repeats``: more (student, its teacher's audit, seed) triples from other training seeds, audited alone."""
    from benchmark_privacy_audit import Recipe, audit, privacy_aim_numbers
    from cmrsynth.generative import load_generator

    roots = {"teacher": teacher, "reflow": student}
    # the real-only scorer (seg_utility's real mode, the same protocol), trained here when the work folder has none
    train_segmenter(ctx["scorer"], [{"datalist": str(ctx["real"]), "key": "training"}], ctx["real"], SEGMENTER_STEPS,
                    ctx["seed"], ctx["threads"])
    with ThreadPoolExecutor(parallel) as pool:
        rows = list(pool.map(lambda r: distillation_row(r[0], roots[r[0]], r[1], ctx, ctx["real"], r[2], bundle,
                                                        "validation", f"{bundle}_image"), student_rows(bundle)))
    generator = load_generator(REPO / "bundles" / bundle, teacher, checkpoint="best_ema.pt")
    for row in rows:
        row["flops_per_slice"] = generator.flops_per_sample(row["steps"])
    items = validation_couplings(student / "pairs" / "teacher_pairs.pt", 128)
    audits_ = {}
    for folder, teacher_json, seed in ((student, teacher_audit, audit_seed), *repeats):
        recipe = Recipe(f"{bundle} reflow student", str(folder.resolve()), bundle=bundle,
                        generator_overrides=dict(GENERATORS[bundle].student))
        audits_[f"teacher, seed {seed}"] = json.loads(teacher_json.read_text())
        audits_[f"reflow, seed {seed}"] = audit(ctx["work"], recipe, f"{folder.name}@{seed}", ctx["data"], None, Path(),
                                                ctx["threads"], 6, seed=seed)
    return {"bundle": bundle, "teacher": f"{teacher.name}/models/best_ema.pt", "masks": "the 10 validation patients' real masks",
            "rows": {f"{r['generator']}_{r['steps']}": r for r in rows},
            "coupling_errors": {name: {str(steps): e for steps, e in few_step_errors(bundle, root, items).items()}
                                for name, root in roots.items()},
            "training": reflow_record(student), "audit_seed": audit_seed,
            "privacy": {name: privacy_aim_numbers(a) for name, a in audits_.items()}}


def reflow_record(student: Path) -> dict:
    """How a reflow student was made, from its folder and its log ``<folder>.log`` beside it: couplings, teacher
    evaluations, minutes drawing them and training, steps."""
    import torch

    from cmrsynth.bundle_run import trainer_progress

    made = torch.load(student / "pairs" / "teacher_pairs.pt", map_location="cpu", weights_only=True)["settings"]
    return {**trainer_progress(student / "models" / "checkpoint_final.pt"), "couplings": made["num_pairs"],
            "validation_couplings": made["validation_pairs"],
            **distillation_cost(student.parent / f"{student.name}.log",
                                (made["num_pairs"] + made["validation_pairs"]) * made["num_inference_steps"])}


def timing(ctx: dict, pairs: int, keys: list[str]) -> dict:
    """Pairs per second of each setting's chain at batch 64 and 256, 2 threads (run alone on the machine)."""
    out = {}
    for key in keys:
        setting = SETTINGS[key]
        folders = ctx["roots"][setting.weights]
        for batch in (64, 256):
            s = chain(setting, folders, ctx["work"] / "timing" / f"{key}_batch{batch}", pairs, batch, ctx["seed"], 2)
            out[f"{key}/batch{batch}"] = {k: s[k] for k in ("pairs", "batch_size", "pairs_per_second", "seconds", "seconds_by_part")}
            print(f"{key} batch {batch}: {s['pairs_per_second']:.1f} pairs/s", flush=True)
    return out


def save(part: dict) -> dict:
    """Merge ``part`` into the benchmark JSON as it is on disk now (rows by setting), so that two stages run side by
    side do not overwrite each other's rows; returns the merged result."""
    result = json.loads(JSON.read_text()) if JSON.is_file() else {}
    for key, value in part.items():
        if isinstance(value, dict) and key in ("settings", "timing", "audits", "image_students"):
            result.setdefault(key, {}).update(value)
        else:
            result[key] = value
    write_benchmark(JSON, result)
    return result


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["quality", "audits", "timing", "distillations", "image_student", "render"],
                   default="quality", help="distillations: reflow against consistency distillation on the image stage "
                   "(--image-teacher); image_student: an image bundle's reflow student against its teacher (--bundle)")
    p.add_argument("--settings", default=None, help="settings to measure (comma-separated; default: all whose weights exist)")
    p.add_argument("--work", default=str(REPO / "runs" / "bench14"), help="students, chains, segmenters")
    p.add_argument("--teachers", default=str(REPO / "runs" / "bench"), help="the teachers' work folder (and acdc64)")
    p.add_argument("--fm-teacher", default=str(REPO / "runs" / "acdc_cpu64" / "fm_cmr"),
                   help="fm_cmr teacher run folder (default: the ACDC cpu64 pipeline's, same split, audited beside it)")
    p.add_argument("--seg-work", default=str(REPO / "runs" / "bench_seg13"),
                   help="holds the real-only scorer segmenter and the privacy benchmark's synthetic masks")
    p.add_argument("--image-teacher", default=str(REPO / "runs" / "bench" / "ddpm_cmr_pre6"),
                   help="distillations: the ddpm_cmr teacher run folder (the privacy benchmark's public_6 row)")
    p.add_argument("--bundle", default="fm_cmr", choices=sorted(TEACHER_STEPS), help="image_student: the image bundle")
    p.add_argument("--teacher", default=None, help="image_student: the teacher's run folder")
    p.add_argument("--student", default=None, help="image_student: its reflow student's run folder")
    p.add_argument("--teacher-audit", default=None, help="image_student: privacy_audit's audit.json of the teacher")
    p.add_argument("--repeat", nargs=3, action="append", default=[], metavar=("STUDENT", "TEACHER_AUDIT", "SEED"),
                   help="image_student: another student (of a teacher trained at another seed) to audit alone")
    p.add_argument("--audit-seed", type=int, default=0, help="image_student: the seed the teacher's audit ran at (the "
                   "student's runs at it too)")
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--timing-pairs", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parallel", type=int, default=1, help="settings evaluated at once (--threads each)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.stage == "image_student" and not (args.teacher and args.student and args.teacher_audit):
        p.error("--stage image_student needs --teacher, --student and --teacher-audit")
    if args.stage == "render":
        render(json.loads(JSON.read_text()))
        return
    work, teachers = Path(args.work), Path(args.teachers)
    data = prepared_acdc(teachers / "acdc64", 64)
    ctx = {"work": work, "data": data, "real": data / "datalist.json", "real_test": load_section(data, "test"),
           "scorer": Path(args.seg_work) / "seg_utility" / "real", "roots": roots(teachers, work, Path(args.fm_teacher)), "pairs": args.pairs,
           "seed": args.seed, "threads": args.threads}
    part = {"benchmark": "few-step sampling", "data": "ACDC (../shared/data/acdc), 64x64 CPU preset, seed-0 split: "
            "train 50 / val 10 / test 10 patients", "pairs": args.pairs, "segmenter_steps": SEGMENTER_STEPS,
            f"machine_{args.stage}": machine()}
    if args.stage not in ("distillations", "image_student"):  # their students are other ones, described in their own sections
        part["students"] = training(work)
    keys = args.settings.split(",") if args.settings else available(ctx["roots"])
    if args.stage == "quality":
        with ThreadPoolExecutor(args.parallel) as pool:
            part["settings"] = dict(zip(keys, pool.map(lambda k: quality_row(k, SETTINGS[k], ctx), keys)))
        part["paper_recipe"] = paper_flops()
    elif args.stage == "distillations":
        part["distillations"] = compare_distillations(ctx, Path(args.image_teacher),
                                                      Path(args.seg_work) / "synthetic" / "masks" / "datalist.json", args.parallel)
    elif args.stage == "image_student":
        comparison = compare_image_student(ctx, args.bundle, Path(args.teacher), Path(args.student), Path(args.teacher_audit),
                                           args.audit_seed, args.parallel,
                                           tuple((Path(a), Path(b), int(c)) for a, b, c in args.repeat))
        # one record per bundle: another bundle's run of this stage keeps its own
        part["image_students"] = {args.bundle: {**comparison, "machine": part.pop("machine_image_student"),
                                                "finished": time.strftime("%Y-%m-%d %H:%M")}}
        return render(save(part))
    elif args.stage == "audits":
        part["coupling_errors"] = coupling_errors(ctx)
        part["audits"] = audits(ctx)
    else:
        part["timing"] = timing(ctx, args.timing_pairs, keys)
    part[f"finished_{args.stage}"] = time.strftime("%Y-%m-%d %H:%M")
    render(save(part))


def training(work: Path) -> dict:
    """How each student was made: its couplings (teacher, sampler) and training steps."""
    from cmrsynth.bundle_run import trainer_progress

    out = {}
    for name in ("mask_generator_student", "ddpm_cmr_student", "fm_cmr_student"):
        root = work / name
        if (root / "models" / "checkpoint_final.pt").is_file():
            import torch

            pairs = torch.load(root / "pairs" / "teacher_pairs.pt", map_location="cpu", weights_only=True)
            sampler = {k: Path(v).name if k == "teacher" else v for k, v in pairs["sampler"].items()}  # no local paths
            out[name] = {"couplings": len(pairs["noise"]), "validation_couplings_from": "validation patients"
                         if pairs.get("validation_start") else "the last 10 % of the training couplings",
                         "teacher_sampler": sampler, **trainer_progress(root / "models" / "checkpoint_final.pt")}
    return out


def _dice(row: dict, structure: str) -> float:
    summary = row["segmenter"]["summary"]
    return float(np.mean([summary[f"{phase}/dice_{structure}"]["mean"] for phase in ("ED", "ES")]))


def _faithfulness(row: dict) -> float:
    return float(np.mean([row["images"]["mask_faithfulness"][k] for k in ("lv", "myo", "rv")]))


def aims(result: dict) -> list[str]:
    """The issue's aims, each met or not, for every student setting against its teacher chain."""
    rows, timing = result.get("settings", {}), result.get("timing", {})
    lines = []
    for key in (k for k, setting in SETTINGS.items() if setting.weights == "students"):
        row, teacher = rows.get(key), rows.get(SETTINGS[key].reference)
        if not row or not teacher or "segmenter" not in row or "segmenter" not in teacher:
            continue
        speed = max((timing.get(f"{key}/batch{b}", {}).get("pairs_per_second", 0.0) for b in (64, 256)), default=0.0)
        drops = {"mask plausibility": teacher["chain"]["mask_plausibility_rate"] - row["chain"]["mask_plausibility_rate"],
                 **{f"faithfulness {k.upper()}": teacher["images"]["mask_faithfulness"][k] - row["images"]["mask_faithfulness"][k]
                    for k in ("lv", "myo", "rv")},
                 **{f"synthetic-only Dice {k.upper()}": _dice(teacher, k) - _dice(row, k) for k in ("lv", "myo", "rv")}}
        worst = max(drops, key=drops.get)
        ratio = result["paper_recipe"]["pair"] / row["flops"]["pair"]
        lines.append(f"- {row['label']}: {speed:.1f} pairs per second (aim >= 20: {'met' if speed >= 20 else 'not met'}); "
                     f"largest quality drop against its teacher chain {drops[worst]:+.3f} ({worst}; aim <= 0.01: "
                     f"{'met' if drops[worst] <= 0.01 else 'not met'}); {ratio:,.0f}x fewer FLOPs per pair than the paper's "
                     f"recipe (aim >= 10,000x: {'met' if ratio >= 10_000 else 'not met'}).")
    return lines


def _ordered(rows: dict) -> dict:
    """Rows in the order of ``SETTINGS`` (the JSON keeps the order they were measured in)."""
    return {k: rows[k] for k in SETTINGS if k in rows}


def tables(result: dict) -> str:
    """Markdown: the settings side by side, where the time goes, the paper's recipe, the students' audits."""
    rows, timing, paper = _ordered(result.get("settings", {})), result.get("timing", {}), result.get("paper_recipe", {})
    out = ["| setting | NFE mask + image | GFLOP per pair (x fewer than the paper) | pairs / s, batch 64 / 256 | "
           "mask plausibility (drawn) | shape W1 to real test: LV area mm² / myo thickness mm | mask diversity (pairwise Dice, "
           "real test {:.3f}) | faithfulness Dice LV / MYO / RV | FD x100 / KID x10^4 | synthetic-only Dice LV / MYO / RV "
           "(mean of ED, ES) |".format(next(iter(rows.values()))["masks"]["real_test_diversity"] if rows else float("nan")),
           "|---" * 10 + "|"]
    for key, r in rows.items():
        speed = " / ".join(f"{timing[f'{key}/batch{b}']['pairs_per_second']:.1f}" if f"{key}/batch{b}" in timing else "-"
                           for b in (64, 256))
        w = r["masks"]["shape_wasserstein"]
        f = r["images"]
        dice = " / ".join(f"{_dice(r, k):.3f}" for k in ("lv", "myo", "rv")) if "segmenter" in r else "not trained"
        out.append(f"| {r['label']} | {r['chain']['mask']['nfe']} + {r['chain']['image']['nfe']} | "
                   f"{r['flops']['pair'] / 1e9:.2f} ({paper.get('pair', float('nan')) / r['flops']['pair']:,.0f}x) | {speed} | "
                   f"{r['chain']['mask_plausibility_rate']:.1%} | {w['lv_area']:.0f} / {w['myo_thickness']:.2f} | "
                   f"{r['masks']['diversity_mean_pairwise_dice']:.3f} | "
                   + " / ".join(f"{f['mask_faithfulness'][k]:.3f}" for k in ("lv", "myo", "rv"))
                   + f" | {100 * f['fd_seg']:.2f} / {1e4 * f['kid_seg']:.2f} | {dice} |")
    if timing:
        out += ["", "Where the time goes (batch 64, seconds per pair):", "",
                "| setting | mask network | mask cleaning | image network | writing NIfTI |", "|---|---|---|---|---|"]
        for key, r in rows.items():
            t = timing.get(f"{key}/batch64")
            if t:
                out.append(f"| {r['label']} | " + " | ".join(f"{t['seconds_by_part'].get(part, 0) / t['pairs']:.4f}"
                                                       for part in ("mask_network", "mask_cleaning", "image_network", "writing")) + " |")
    if paper:
        out += ["", "The paper's recipe, its networks built from its published configs (no weights) and counted the same way:", "",
                "| network | parameters | GFLOP per evaluation (64x64) | steps | TFLOP |", "|---|---|---|---|---|"]
        for stage in ("mask", "image"):
            n = paper[stage]
            out.append(f"| {stage} | {n['parameters'] / 1e6:.1f} M | {n['flops_per_evaluation'] / 1e9:.2f} | {n['steps']} | {n['flops'] / 1e12:.1f} |")
        out.append(f"| pair | | | | {paper['pair'] / 1e12:.1f} |")
    errors = result.get("coupling_errors", {})
    if errors:
        out += ["", "Distance to the teacher's 50-step sample of the same noise and conditions (the student's validation "
                "couplings, not trained on; mean squared error in the objective's space; DDIM at 1 / 2 trailing steps, fm_cmr: "
                "Euler):", "",
                "| stage | teacher, 1 step | teacher, 2 steps | student, 1 step | student, 2 steps |", "|---|---|---|---|---|"]
        for stage in (s for s in ("mask", "image", "fm_cmr") if f"{s}/teachers/1" in errors):
            out.append(f"| {stage} | " + " | ".join(f"{errors[f'{stage}/{w}/{n}']['mse']:.4f}" for w in ("teachers", "students")
                                                     for n in (1, 2)) + " |")
    audits_ = result.get("audits", {})
    if audits_:
        from cmrsynth.audit import strongest

        out += ["", "Students audited like their teachers (privacy_audit, 50 members / 20 non-members, 6 slices each):", "",
                "| generator | strongest attack per patient: AUC | per slice: AUC, TPR at 1 % FPR | reconstruction AUC |",
                "|---|---|---|---|"]
        named = {"ddpm_cmr_student": audits_.get("ddpm_cmr_student"), "ddpm_cmr teacher (new default)": audits_.get("teachers", {}).get("new_default"),
                 "fm_cmr_student": audits_.get("fm_cmr_student"), "fm_cmr teacher": audits_.get("teachers", {}).get("fm_cmr"),
                 "mask_generator_student": audits_.get("mask_generator_student"),
                 "mask_generator teacher": audits_.get("teachers", {}).get("mask_generator")}
        for name, a in named.items():
            if not a:
                continue
            (pn, pm), (sn, sm) = strongest(a["membership"]), strongest(a["membership_slices"])
            rec = a.get("reconstruction", {}).get("membership", {}).get("neg_rms", {}).get("auc", {}).get("value")
            out.append(f"| {name} | {pn} {pm['auc']['value']:.2f} | {sn} {sm['auc']['value']:.2f}, {sm['tpr_at_1pct_fpr']['value']:.1%} | "
                       f"{'-' if rec is None else f'{rec:.2f}'} |")
    lines = aims(result)
    if lines:
        out += ["", "Aims:", "", *lines]
    return "\n".join(out)


def _drops(reference: dict, row: dict) -> dict[str, float]:
    """How much lower than ``reference`` a row's faithfulness and synthetic-only Dice are, per structure."""
    faithful = {f"faithfulness {k.upper()}": reference["fidelity"]["mask_faithfulness"][k] - row["fidelity"]["mask_faithfulness"][k]
                for k in ("lv", "myo", "rv")}
    return {**faithful, **({f"synthetic-only Dice {k.upper()}": _dice(reference, k) - _dice(row, k) for k in ("lv", "myo", "rv")}
                           if "segmenter" in row else {})}


def _worst_drop(drops: dict[str, float]) -> str:
    """The largest drop and where it is; 'none' when every measure is at or above the reference."""
    if not drops:
        return "-"
    worst = max(drops, key=drops.get)
    return f"{drops[worst]:.3f} ({worst})" if drops[worst] > 0 else "none"


def distillation_tables(comparison: dict) -> str:
    """Markdown: reflow against consistency distillation, quality per setting and what each method cost."""
    rows, errors = comparison["rows"], comparison["coupling_errors"]
    order = ["teacher_50", "teacher_1", "teacher_2", "reflow_1", "reflow_2", "consistency_1", "consistency_2"]
    out = ["| generator | DDIM steps | faithfulness Dice LV / MYO / RV | FD x100 / KID x10^4 | synthetic-only Dice LV / MYO / RV "
           "(mean of ED, ES) | distance to the teacher's 50-step sample (MSE) | largest drop against the teacher's DDIM-50 |",
           "|---" * 7 + "|"]
    for key in (k for k in order if k in rows):
        r, name = rows[key], rows[key]["generator"]
        f = r["fidelity"]
        dice = " / ".join(f"{_dice(r, k):.3f}" for k in ("lv", "myo", "rv")) if "segmenter" in r else "not trained"
        error = errors.get(name, {}).get(str(r["steps"]))
        drops = _drops(rows["teacher_50"], r) if key != "teacher_50" else {}
        out.append(f"| {name} | {r['steps']} | " + " / ".join(f"{f['mask_faithfulness'][k]:.3f}" for k in ("lv", "myo", "rv"))
                   + f" | {100 * f['fd_seg']:.2f} / {1e4 * f['kid_seg']:.2f} | {dice} | "
                   + (f"{error['mse']:.4f}" if error else "0 (itself)") + " | "
                   + _worst_drop(drops) + " |")
    out += ["", "What each distillation cost (one thread; reflow draws its couplings before training, consistency evaluates "
            "the teacher and the target network at every step):", "",
            "| method | teacher evaluations | minutes before training | minutes training | student steps |", "|---|---|---|---|---|"]
    for name, t in comparison["training"].items():
        out.append(f"| {name} | {t['teacher_evaluations']:,} | {t['minutes_before_training']:.0f} | {t['minutes_training']:.0f} | "
                   f"{t['iteration']:,} |")
    return "\n".join(out)


def figure(result: dict, path: Path) -> None:
    """Speed against quality: pairs per second (batch 64) against synthetic-only Dice and faithfulness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, timing = _ordered(result.get("settings", {})), result.get("timing", {})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key, r in rows.items():
        t = timing.get(f"{key}/batch64")
        if not t:
            continue
        x = t["pairs_per_second"]
        if "segmenter" in r:
            axes[0].scatter(x, np.mean([_dice(r, k) for k in ("lv", "myo", "rv")]))
            axes[0].annotate(r["label"].split(" (")[0], (x, np.mean([_dice(r, k) for k in ("lv", "myo", "rv")])), fontsize=7)
        axes[1].scatter(x, _faithfulness(r))
        axes[1].annotate(r["label"].split(" (")[0], (x, _faithfulness(r)), fontsize=7)
    for ax, label in zip(axes, ("synthetic-only segmenter Dice (mean LV, MYO, RV)", "faithfulness Dice (mean LV, MYO, RV)")):
        ax.set_xscale("log")
        ax.axvline(20, ls="--", c="grey", lw=0.8)
        ax.set_xlabel("(mask, image) pairs per second, 2 CPU threads, batch 64")
        ax.set_ylabel(label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stage_line(result: dict) -> str:
    """The README stage table's cell: speed beside quality, teachers against the students."""
    rows, timing = result.get("settings", {}), result.get("timing", {})
    cells = []
    for key in ("teacher_ddim50", "student_2", "student_1"):
        r, t = rows.get(key), timing.get(f"{key}/batch64")
        if not r or not t or "segmenter" not in r:
            continue
        cells.append(f"{r['label'].split(' (')[0]}: {t['pairs_per_second']:.1f} pairs / s, {r['chain']['mask_plausibility_rate']:.0%} "
                     f"plausible masks, faithfulness {_faithfulness(r):.3f}, synthetic-only Dice LV / RV "
                     f"{_dice(r, 'lv'):.3f} / {_dice(r, 'rv'):.3f}")
    return "[benchmark](docs/fast_sampling.md): " + "; ".join(cells) if cells else "not measured yet"


def image_student_tables(comparison: dict) -> str:
    """Markdown: an image bundle's teacher and reflow student on the image stage, their cost and their audits."""
    from benchmark_privacy_audit import aim_cells

    rows, errors, t = comparison["rows"], comparison["coupling_errors"], comparison["training"]
    sampler = "Euler" if comparison["bundle"] == "fm_cmr" else "DDIM"
    reference = f"teacher_{TEACHER_STEPS[comparison['bundle']]}"
    out = [f"| generator | {sampler} steps | MFLOP per slice | faithfulness Dice LV / MYO / RV | FD x100 / KID x10^4 | synthetic-only "
           "Dice LV / MYO / RV (mean of ED, ES) | distance to the teacher's 50-step sample (MSE) | largest drop against the "
           f"teacher's {sampler}-{TEACHER_STEPS[comparison['bundle']]} |", "|---" * 8 + "|"]
    for key, r in rows.items():
        f, name = r["fidelity"], r["generator"]
        dice = " / ".join(f"{_dice(r, k):.3f}" for k in ("lv", "myo", "rv")) if "segmenter" in r else "not trained"
        error = errors.get(name, {}).get(str(r["steps"]))
        out.append(f"| {name} | {r['steps']} | {r['flops_per_slice'] / 1e6:.0f} | "
                   + " / ".join(f"{f['mask_faithfulness'][k]:.3f}" for k in ("lv", "myo", "rv"))
                   + f" | {100 * f['fd_seg']:.2f} / {1e4 * f['kid_seg']:.2f} | {dice} | "
                   + (f"{error['mse']:.4f}" if error else "-") + " | "
                   + (_worst_drop(_drops(rows[reference], r)) if key != reference else "-") + " |")
    out += ["", f"The student: {t['couplings']:,} training + {t['validation_couplings']:,} validation couplings "
            f"({t['teacher_evaluations']:,} teacher evaluations, {t['minutes_before_training']:.0f} minutes), then "
            f"{t['iteration']:,} steps ({t['minutes_training']:.0f} minutes); wall minutes on a shared 2-core machine.", "",
            "| generator (privacy_audit, 50 members / 20 non-members, 6 slices each) | strongest attack per slice: AUC | "
            "highest TPR at 1 % FPR | black-box reconstruction AUC | calibrated, per patient: AUC | privacy aim |",
            "|---|---|---|---|---|---|"]
    for name, a in comparison["privacy"].items():
        out.append(f"| {name} | {aim_cells(a)} |")
    return "\n".join(out)


def render(result: dict) -> None:
    """docs/fast_sampling.md's results section, the README's stage cell and the speed / quality figure, from the
    benchmark JSON."""
    replace_marked(DOCS / "fast_sampling.md", "results", tables(result))
    if result.get("distillations"):
        replace_marked(DOCS / "fast_sampling.md", "distillations", distillation_tables(result["distillations"]))
    for bundle, comparison in result.get("image_students", {}).items():
        replace_marked(DOCS / "fast_sampling.md", f"{bundle}-student", image_student_tables(comparison))
    replace_marked(REPO / "README.md", "fast-stage", stage_line(result), inline=True)
    if result.get("timing") and result.get("settings"):
        figure(result, FIGURE)


if __name__ == "__main__":
    main()

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
"""The one-command pipeline: a cohort (or the embedded phantoms) to an audited, released synthetic dataset and a report.

prepare -> mask_generator (train, sample) -> each image generator (train, sample on the synthetic masks and on the
real test masks) -> seg_utility (real, synthetic-only, real + synthetic, few-real with and without synthetic; scored
on the real test patients) -> fidelity -> privacy_audit (each generator and the mask generator) -> release gate and
export -> report card. Each bundle step is ``python -m monai.bundle run`` of its bundle; each stage is resumable
(``cmrsynth.pipeline.stages``) and an MLflow child run of one parent run; all of it lives under one run folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from functools import cached_property, partial
from pathlib import Path

from cmrsynth.bundle_run import run_bundle, trainer_progress
from cmrsynth.data.checks import check_output_path
from cmrsynth.errors import CMRDataError
from cmrsynth.pipeline.presets import GENERATORS, MASK_GENERATOR, GeneratorSpec, Preset, TrainStep, generators, preset
from cmrsynth.pipeline.stages import REPO, StageRunner, bundle_fingerprint, fingerprint
from cmrsynth.tracking import create_experiments, tracked_run
from cmrsynth.zoo import sha256

EXPERIMENT = "cmr-synth-pipeline"
BUNDLES = REPO / "bundles"
ZOO_PHANTOM = REPO / "zoo" / "phantom"
SEG = "seg_utility"


class StageFailed(RuntimeError):
    """A bundle run of a stage failed; the message is one line naming the stage, the cause and the log."""


@dataclass(frozen=True)
class Request:
    """What the user asked for."""

    out: Path
    input: Path | None = None  # None: the embedded phantom cohort
    reader: str = "acdc"
    info_csv: Path | None = None
    preset: str = "demo"
    generators: tuple[str, ...] = ("ddpm_cmr", "fm_cmr", "ldm_cmr")
    seed: int = 0
    sampling: str | None = None  # None: the preset's ("fast": 2-step students; "teacher": the bundles' samplers)
    real_slices_in_report: bool = True  # real training slices beside the synthetic ones in the report


def cohort_fingerprint(path: Path, exclude: Path | None = None) -> str:
    """A hash of a cohort's file names and contents (its path is not part of it: nothing identifying goes into the
    run's records). Contents, not modification times: a cohort copied or restored elsewhere is the same cohort,
    and a resumed run must not retrain everything because of it. Files under ``exclude`` (the run folder, when it
    lies beside a datalist) are left out."""
    h = hashlib.sha256()
    root = path.parent if path.is_file() else path  # a datalist's files sit around it
    skip = exclude.resolve() if exclude is not None else None
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if skip is None or not f.resolve().is_relative_to(skip):
            h.update(f"{f.relative_to(root)}:{sha256(f)}".encode())
    return h.hexdigest()[:16]


class Pipeline:
    """One run folder's stages; ``run()`` does them all in order."""

    def __init__(self, request: Request):
        self.req = request
        self.preset: Preset = preset(request.preset, request.sampling)
        self.names = generators(list(request.generators))
        self.out = request.out.absolute()
        self.prepared = self.out / "prepared"
        self.real = self.prepared / "datalist.json"
        self.runner: StageRunner | None = None
        self.records = None  # the user's cohort, read once (None: the embedded phantoms)
        self.uri = ""

    # ---- helpers -------------------------------------------------------------------------------------------------
    @cached_property
    def cohort_hash(self) -> str:
        """The user's cohort's fingerprint (read once: it hashes every file)."""
        return cohort_fingerprint(self.req.input, exclude=self.out)

    def bundle(self, stage: str, bundle: str, configs: list[str], root: Path, overrides: dict, tracked: bool = False) -> float:
        """``python -m monai.bundle run`` of a bundle into ``root``, logged to logs/<stage>.log; one line on failure."""
        log = self.out / "logs" / f"{stage}.log"
        extra = ["--tracking", "mlflow", "--tracking_uri", self.uri] if tracked else []
        start = log.stat().st_size if log.is_file() else 0  # the log keeps earlier attempts: read only this one
        try:
            return run_bundle(BUNDLES / bundle, configs, root, overrides, log=log, extra_args=extra, cwd=self.out)
        except RuntimeError:
            raise StageFailed(f"stage {stage}: {_cause(log, start)} (log: {log})") from None

    def common(self) -> dict:
        return {"image_size": self.preset.size, "seed": self.req.seed}

    def settings(self, bundle: str, files: list[str], overrides: dict, **extra) -> dict:
        """What a bundle stage's hash covers: the config files it runs and its overrides (run folder hidden)."""
        return {"overrides": _hide(overrides, self.out), "bundle": bundle_fingerprint(bundle, files), **extra}

    @property
    def fast(self) -> bool:
        return self.preset.sampling == "fast"

    def sampling_root(self, spec: GeneratorSpec) -> Path:
        """The run root whose weights draw the released data (and are audited): the student's with fast sampling."""
        return self.out / (f"{spec.bundle}_student" if self.fast else spec.bundle)

    def sampling_overrides(self, spec: GeneratorSpec) -> dict:
        return dict(spec.student) if self.fast else {}

    def total_stages(self) -> int:
        per_gen = len(self.names)
        seg = 1 + (2 if self.preset.mixed else 1) * per_gen + len(self.preset.few_real) * (1 + per_gen)
        mask_train = len(MASK_GENERATOR.train)
        train = sum(len(GENERATORS[n].train) for n in self.names)
        distill = (per_gen + 1) if self.fast else 0
        sanity = 2  # the untrained generator's images and their fidelity
        return 1 + mask_train + 1 + train + distill + 2 * per_gen + seg + per_gen + sanity + (per_gen + 1) + per_gen + 1

    # ---- stages --------------------------------------------------------------------------------------------------
    def prepare(self) -> dict:
        from cmrsynth.data.phantom import write_phantom_cohort
        from cmrsynth.data.prepare import PrepareConfig, prepare_cohort, read_cohort

        cfg = PrepareConfig(size=self.preset.size, seed=self.req.seed)
        if self.req.input is None:
            source = {"phantom_per_group": self.preset.phantom_per_group}
        else:
            source = {"reader": self.req.reader, "cohort": self.cohort_hash,
                      "info_csv": sha256(self.req.info_csv)[:16] if self.req.info_csv else None}

        def job() -> dict:
            records = self.records
            if records is None:
                cohort = self.out / "cohort"
                write_phantom_cohort(cohort, n_per_group=self.preset.phantom_per_group, seed=self.req.seed, overwrite=True)
                records = read_cohort("acdc", cohort)
            summary = prepare_cohort(records, self.prepared, cfg, overwrite=True,
                                     inputs=[p for p in (self.req.input, self.req.info_csv) if p])
            self.check_split(summary["patients_per_split"], summary["patients"])
            return {k: summary[k] for k in ("patients", "slices", "patients_per_split", "slices_per_split")}

        return self.runner.run("prepare", {**source, "prepare": asdict(cfg)}, [],
                               [self.prepared, self.out / "cohort"], job)

    def check_split(self, split: dict[str, int], patients: int | None = None) -> None:
        """A preset that does not fit the cohort is one clear error (checked on the planned split before anything is
        written, and again on the prepared one)."""
        need = max((*self.preset.few_real, 1)) + 1
        if split.get("train", 0) < need or split.get("val", 0) < 1 or split.get("test", 0) < 1:
            n = sum(split.values()) if patients is None else patients
            raise CMRDataError(self.req.input or "phantom cohort",
                               f"{n} labelled patients split {split}: preset {self.preset.name!r} needs at least {need} "
                               "training, 1 validation and 1 test patient")

    def train(self, spec: GeneratorSpec) -> list[str]:
        """Each training command of a generator bundle (fine-tuned from the shipped phantom weights with the preset's
        ``from_zoo``, or always where the step's recipe starts there: ``public_start``)."""
        root, stages, after = self.out / spec.bundle, [], ["prepare"]
        starts = self.starts(spec)
        zoo = self.install_zoo(spec.bundle) if self.preset.from_zoo or any(starts) else None
        for step, start in zip(spec.train, starts):
            name = f"{spec.bundle}.train" + (f".{step.budget}" if len(spec.train) > 1 else "")
            epochs = self.preset.epochs[step.budget]
            overrides = {"dataset_dir": str(self.prepared), **self.common(), "max_epochs": epochs,
                         "epoch_length": self.preset.epoch_length, "progress_bar": False}
            if start:
                overrides["pretrained"] = str(zoo / start)
            settings = self.settings(spec.bundle, ["common.yaml", *step.configs], overrides, configs=step.configs, zoo=_zoo_hash(zoo))

            def job(step=step, overrides=overrides, epochs=epochs) -> dict:
                if epochs == 0:  # taken as shipped: the zoo's file, hash-verified when installed
                    return install_shipped(zoo, root, step)
                self.bundle(name, spec.bundle, ["common.yaml", *step.configs], root, overrides, tracked=True)
                return _progress(root, step)

            # the first step owns the root; a later one (ldm_cmr's latent denoiser) owns its checkpoints beside the first's
            owned = [root] if not stages else [*(root / "models").glob("*.pt"), root / "eval"]
            self.runner.run(name, settings, after, owned, job)
            stages.append(name)
            after = [*after, name]
        if self.fast:
            stages.append(self.distill(spec, after))
        return stages

    def starts(self, spec: GeneratorSpec) -> list[str | None]:
        """The shipped file each training step starts from (None: from scratch)."""
        return [step.from_zoo if step.from_zoo and (self.preset.from_zoo or step.public_start) else None for step in spec.train]

    def training_words(self, spec: GeneratorSpec) -> str:
        """How a generator was trained, for its data card: where each step started and its steps on the private cohort."""
        parts = []
        for step, start in zip(spec.train, self.starts(spec)):
            # a step that did not train holds the shipped file, which has no trainer state to read
            words = ("the shipped phantom weights as they are (no private data)" if not self.preset.epochs[step.budget]
                     else ("the shipped phantom weights (public, procedural), then " if start else "from scratch, ")
                     + f"{_progress(self.out / spec.bundle, step)['iteration']:,} steps on the private cohort")
            parts.append(words if len(spec.train) == 1 else f"{step.budget}: {words}")
        return "; ".join(parts)

    def distill(self, spec: GeneratorSpec, after: list[str]) -> str:
        """A 2-step reflow student of a trained generator (its bundle's configs/distill.yaml)."""
        name, root, d = f"{spec.bundle}.distill", self.sampling_root(spec), self.preset.distill
        overrides = {"dataset_dir": str(self.prepared), **self.common(), "teacher": str(self.out / spec.bundle / "models" / "best_ema.pt"),
                     "num_pairs": d.num_pairs, "validation_pairs": d.validation_pairs, "pair_steps": d.pair_steps,
                     "max_epochs": d.epochs, "epoch_length": self.preset.epoch_length, "progress_bar": False}

        def job() -> dict:
            self.bundle(name, spec.bundle, ["common.yaml", *spec.distill_configs], root, overrides, tracked=True)
            return trainer_progress(root / "models" / "checkpoint_final.pt")

        settings = self.settings(spec.bundle, ["common.yaml", *spec.distill_configs], overrides, configs=spec.distill_configs)
        self.runner.run(name, settings, after, [root], job)
        return name

    def draw(self, stage: str, bundle: str, root: Path, overrides: dict, out: Path) -> dict:
        """Images for a datalist's masks (a generator bundle's inference.yaml); returns its sampling summary."""
        self.bundle(stage, bundle, ["common.yaml", "inference.yaml"], root, overrides)
        return _summary(out / "datalist.json")

    def install_zoo(self, bundle: str) -> Path:
        """The shipped phantom-trained bundle, installed (hash-verified) under the run folder; reinstalled when the
        shipped zip changed."""
        from cmrsynth.zoo import install

        source, target = ZOO_PHANTOM / f"{bundle}.zip", self.out / "zoo" / bundle
        digest = sha256(source) if source.is_file() else None
        if digest is None or not (target / ".source.sha256").is_file() or (target / ".source.sha256").read_text() != digest:
            install(source, target)
            (target / ".source.sha256").write_text(digest)
        return target

    def sample_masks(self, after: list[str]) -> Path:
        root = self.sampling_root(MASK_GENERATOR)
        out = self.out / MASK_GENERATOR.bundle / "eval" / "masks"
        overrides = {**self.common(), "per_class": self.preset.per_class, "output_dir": str(out),
                     "keep_implausible": self.preset.keep_implausible, **self.sampling_overrides(MASK_GENERATOR)}
        self.runner.run("mask_generator.sample", self.settings("mask_generator", ["common.yaml", "inference.yaml"], overrides),
                        after, [out], partial(self.draw, "mask_generator.sample", "mask_generator", root, overrides, out))
        return out / "datalist.json"

    def sample_images(self, name: str, masks: Path, after: list[str]) -> dict[str, Path]:
        spec, lists = GENERATORS[name], {}
        root = self.sampling_root(spec)
        for part, (datalist, key) in {"synthetic": (masks, "synthetic"), "test_masks": (self.real, "test")}.items():
            out = self.out / name / "eval" / ("images" if part == "synthetic" else part)
            overrides = {**self.common(), "mask_datalist": str(datalist), "mask_key": key, "output_dir": str(out),
                         **self.sampling_overrides(spec)}
            stage = f"{name}.sample" + ("" if part == "synthetic" else ".test_masks")
            self.runner.run(stage, self.settings(name, ["common.yaml", "inference.yaml"], overrides),
                            after + (["mask_generator.sample"] if part == "synthetic" else []), [out],
                            partial(self.draw, stage, name, root, overrides, out))
            lists[part] = out / "datalist.json"
        return lists

    def segmenter(self, mode: str, sources: list[dict], after: list[str]) -> dict:
        root = self.out / SEG / mode
        steps = self.preset.segmenter_steps
        overrides = {"real_datalist": str(self.real), "sources": sources, **self.common(), "max_epochs": max(1, steps // 50),
                     "epoch_length": 50, "progress_bar": False, **self.preset.segmenter_overrides}

        def job() -> dict:
            self.bundle(f"seg.{mode}", SEG, ["common.yaml", "train.yaml"], root, overrides, tracked=True)
            self.bundle(f"seg.{mode}.evaluate", SEG, ["common.yaml", "evaluate.yaml"], root,
                        {"real_datalist": str(self.real), "eval_key": "test", "image_size": self.preset.size})
            metrics = json.loads((root / "eval" / "evaluation" / "metrics.json").read_text())
            training = json.loads((root / "models" / "training_set.json").read_text())["training"]
            return {"summary": metrics["summary"], "patients": metrics["patients"], "training_slices": len(training),
                    **trainer_progress(root / "models" / "checkpoint_final.pt")}

        return self.runner.run(f"seg.{mode}", self.settings(SEG, ["common.yaml", "train.yaml", "evaluate.yaml"], overrides),
                               after, [root], job)

    def fidelity(self, name: str, paired: Path, after: list[str]) -> dict:
        out = self.out / "fidelity" / name
        overrides = {"real_datalist": str(self.real), "synthetic_datalist": str(paired), "fidelity_dir": str(out), **self.common()}

        def job() -> dict:
            self.bundle(f"fidelity.{name}", SEG, ["common.yaml", "fidelity.yaml"], self.out / SEG / "real", overrides)
            scores = json.loads((out / "fidelity.json").read_text())
            return {k: scores[k] for k in ("n_synthetic", "fd_seg", "kid_seg", "mask_faithfulness", "real_dice", "paired") if k in scores}

        return self.runner.run(f"fidelity.{name}", self.settings(SEG, ["common.yaml", "fidelity.yaml"], overrides), after, [out], job)

    def untrained(self) -> dict:
        """The sanity row: ddpm_cmr with freshly initialised weights (a pixel-space generator: an untrained latent one
        would have no autoencoder to decode with) draws the real test masks and is scored like the others; its
        faithfulness is what the fidelity floor must stay above."""
        from cmrsynth.benchmark import untrained_generator

        name = "ddpm_cmr"
        root = self.out / "untrained" / name
        paired = root / "eval" / "test_masks"
        overrides = {**self.common(), "mask_datalist": str(self.real), "mask_key": "test", "output_dir": str(paired),
                     "num_inference_steps": 10}

        def job() -> dict:
            untrained_generator(root, self.req.seed, bundle=name)
            return {"generator": name, **self.draw("untrained.sample", name, root, overrides, paired)}

        self.runner.run("untrained.sample", self.settings(name, ["common.yaml", "inference.yaml"], overrides), ["prepare"], [root], job)
        return {"generator": name, **self.fidelity("untrained", paired / "datalist.json", ["untrained.sample", "seg.real"])}

    def audit(self, name: str, synthetic: Path, after: list[str], key: str = "training") -> dict:
        out = self.out / "privacy_audit" / name
        spec = GENERATORS.get(name, MASK_GENERATOR)
        overrides = {"generator_bundle": str(BUNDLES / name), "generator_root": str(self.sampling_root(spec)), "real_datalist": str(self.real),
                     "synthetic_datalist": str(synthetic), "synthetic_key": key, "output_dir": str(out),
                     "feature_encoder_root": str(self.out / SEG / "real"), "feature_encoder_bundle": str(BUNDLES / SEG),
                     "generator_overrides": {"image_size": self.preset.size, **self.sampling_overrides(spec)}, "tracking_uri": self.uri,
                     "slices_per_patient": self.preset.audit_slices_per_patient, "seed": self.req.seed}
        if name == MASK_GENERATOR.bundle:
            overrides.pop("feature_encoder_root")

        def job() -> dict:
            self.bundle(f"audit.{name}", "privacy_audit", ["audit.yaml"], out.parent, overrides)
            return _audit_digest(json.loads((out / "audit.json").read_text()))

        return self.runner.run(f"audit.{name}", self.settings("privacy_audit", ["audit.yaml"], overrides), after, [out], job)

    def release(self, name: str, synthetic: Path, after: list[str], facts: dict) -> dict:
        from cmrsynth.pipeline.release import export_release

        out = self.out / "release" / name
        gated = synthetic.with_name("datalist_released.json")

        def job() -> dict:
            self.bundle(f"release.{name}", "privacy_audit", ["release.yaml"], self.out / "privacy_audit",
                        {"real_datalist": str(self.real), "synthetic_datalist": str(synthetic)})
            record = json.loads(gated.with_name("datalist_released_release_record.json").read_text())
            gate = {"candidates": record["kept"] + len(record["removed"]), "removed": len(record["removed"]), "kept": record["kept"]}
            card = {**facts, "gate": gate}
            return {**export_release(gated, out, card), "gate": gate}

        settings = {"facts": facts, "bundle": bundle_fingerprint("privacy_audit", ["release.yaml"])}
        return self.runner.run(f"release.{name}", settings, after, [out], job)

    # ---- the whole run -------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Every stage in order; returns the report's facts (also written to report/report.json)."""
        from cmrsynth.data.prepare import read_cohort

        check_output_path(self.out, [p for p in (self.req.input, self.req.info_csv) if p])
        # the cohort is read before anything is written: a reader / cohort mismatch leaves no run folder behind
        self.records = None if self.req.input is None else read_cohort(self.req.reader, self.req.input, self.req.info_csv)
        if self.records is not None:
            self.check_split(_planned_split(self.records, self.req.seed))
        self.out.mkdir(parents=True, exist_ok=True)
        bundles = [MASK_GENERATOR.bundle, *self.names, SEG, "privacy_audit"]
        self.uri = create_experiments(self.out, [EXPERIMENT, *bundles])
        params = {"preset": asdict(self.preset), "generators": self.names, "seed": self.req.seed, "sampling": self.preset.sampling,
                  "cohort": "embedded phantoms" if self.req.input is None else f"{self.req.reader} cohort {self.cohort_hash}"}
        with tracked_run(self.out, EXPERIMENT, f"{self.preset.name}", params, uri=self.uri) as tracker:
            self.runner = StageRunner(self.out, self.total_stages(), tracker)
            facts = {"request": params, "prepare": self.prepare()}
            mask_stages = self.train(MASK_GENERATOR)
            masks = self.sample_masks(mask_stages)
            facts["masks"] = self.runner.records["mask_generator.sample"]["result"]
            images, trained = {}, {}
            for name in self.names:
                trained[name] = self.train(GENERATORS[name])
                images[name] = self.sample_images(name, masks, trained[name])
            facts["utility"] = self.utility(images, trained)
            facts["fidelity"] = {n: self.fidelity(n, images[n]["test_masks"], [f"{n}.sample.test_masks", "seg.real"]) for n in self.names}
            facts["sanity"] = self.untrained()
            facts["privacy"] = {n: self.audit(n, images[n]["synthetic"], [*trained[n], "seg.real", f"{n}.sample"]) for n in self.names}
            facts["privacy"][MASK_GENERATOR.bundle] = self.audit(MASK_GENERATOR.bundle, masks, [*mask_stages, "mask_generator.sample"], "synthetic")
            facts["sampling"] = {n: self.runner.records[f"{n}.sample"]["result"] for n in self.names}
            facts["training"] = {n: {s: self.runner.records[s]["result"] for s in trained[n]} for n in self.names}
            facts["training"][MASK_GENERATOR.bundle] = {s: self.runner.records[s]["result"] for s in mask_stages}
            facts["seconds"] = {k: r.get("seconds") for k, r in self.runner.records.items()}
            facts["release"] = {n: self.release(n, images[n]["synthetic"], [f"audit.{n}"], self.card_facts(n, facts)) for n in self.names}
            facts["report"] = self.report(facts, images, masks)
            tracker.log_metrics(_headline(facts))
            for f in ("report.md", "report.json", "report.html"):
                tracker.log_artifact(self.out / "report" / f)
        return facts

    def utility(self, images: dict[str, dict[str, Path]], trained: dict[str, list[str]]) -> dict:
        """seg_utility per training-set composition, all scored on the real test patients."""
        real = {"datalist": str(self.real), "key": "training"}
        result = {"real": self.segmenter("real", [real], ["prepare"])}
        for name in self.names:
            syn = {"datalist": str(images[name]["synthetic"]), "key": "training"}
            after = [f"{name}.sample"]
            result[f"{name}/synthetic"] = self.segmenter(f"{name}.synthetic", [syn], after)
            if self.preset.mixed:
                result[f"{name}/real+synthetic"] = self.segmenter(f"{name}.real_synthetic", [real, {**syn, "ratio": 1.0}], after)
        for k in self.preset.few_real:
            few = {**real, "patients": k}
            result[f"few{k}"] = self.segmenter(f"few{k}", [few], ["prepare"])
            for name in self.names:
                syn = {"datalist": str(images[name]["synthetic"]), "key": "training"}
                result[f"{name}/few{k}+synthetic"] = self.segmenter(f"{name}.few{k}_synthetic", [few, syn], [f"{name}.sample"])
        return result

    def card_facts(self, name: str, facts: dict) -> dict:
        """What the data card of a generator's release states (counts, hashes and results; no identifiers)."""
        data = json.loads(self.real.read_text())
        groups: dict[str, int] = {}
        for pid in {e["patient"]: e.get("group") for e in data["training"]}.items():
            groups[str(pid[1])] = groups.get(str(pid[1]), 0) + 1
        weights = self.sampling_root(GENERATORS[name]) / "models" / "best_ema.pt"
        meta = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())
        audit, fid = facts["privacy"][name], facts["fidelity"][name]
        return {"generator": name, "bundle_version": meta["version"], "image_size": self.preset.size, "weights_sha256": sha256(weights),
                "sampler": _sampler_words(facts["sampling"][name], self.fast), "source_training_patients": sum(groups.values()),
                "source_groups": groups, "training": self.training_words(GENERATORS[name]), "epsilon": None, "audit": audit,
                "usable_note": usability(fid)["note"],
                "intended_use": "research on segmentation and synthetic-data methods; not for clinical use or diagnosis"}

    def report(self, facts: dict, images: dict, masks: Path) -> dict:
        from cmrsynth.pipeline.card import write_report

        figures = {"real": self.prepared if self.req.real_slices_in_report else None, "masks": masks.parent / "masks.png",
                   **{n: images[n]["synthetic"].parent / "samples.png" for n in self.names}}
        out = self.out / "report"
        # the choice of showing real slices is part of the report: changing it rewrites the report
        settings = {"facts": fingerprint(facts), "real_slices": self.req.real_slices_in_report}
        return self.runner.run("report", settings, [], [out],
                               lambda: write_report(facts, figures, out, self.machine()))

    def machine(self) -> dict:
        from cmrsynth.benchmark import machine

        return {**machine(), "preset": self.preset.device_note}


def usability(fidelity: dict) -> dict:
    """The fidelity floor: a generator is usable when the real-only segmenter finds its masks in its images at least
    half as well as in real images (mean faithfulness Dice over LV, MYO, RV >= 0.5 x the real images' own). An
    untrained generator's noise scores near 0, so its privacy result says nothing and is reported as uninformative."""
    faith, ceiling = fidelity["mask_faithfulness"], fidelity.get("real_dice") or {}
    mean = sum(faith.values()) / len(faith)
    ceil = sum(ceiling.values()) / len(ceiling) if ceiling else 1.0
    usable = mean >= 0.5 * ceil
    note = (f"yes: mask faithfulness {mean:.2f} against {ceil:.2f} for real images (floor {0.5 * ceil:.2f})" if usable else
            f"no: mask faithfulness {mean:.2f} is below the floor {0.5 * ceil:.2f} (real images {ceil:.2f}); its images do not "
            "show their masks, so its privacy result is uninformative")
    return {"usable": usable, "faithfulness": mean, "ceiling": ceil, "note": note}


def install_shipped(zoo: Path | None, root: Path, step: TrainStep) -> dict:
    """A training step with no budget takes the shipped network as it is (ldm_cmr's autoencoder in the demo)."""
    if zoo is None:
        raise CMRDataError(root, f"{' + '.join(step.configs)} has no training budget and no shipped weights to start from")
    files = sorted((zoo / "models").rglob("*.pt"))
    shipped = [f for f in files if f.parent.name == "autoencoder"]
    for f in shipped:
        target = root / "models" / "autoencoder" / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    return {"installed": [f.name for f in shipped]}


def _planned_split(records, seed: int) -> dict[str, int]:
    """Patients per split that preparation will make (labelled patients, the default fractions and seed)."""
    from cmrsynth.data.splits import split_patients

    split = split_patients({r.patient_id: r.group for r in records if r.labelled}, seed=seed)
    return {s: sum(v == s for v in split.values()) for s in ("train", "val", "test")}


def _sampler_words(sampling: dict, student: bool) -> str:
    words = f"{sampling.get('sampler')}, {sampling.get('nfe')} network evaluations"
    return f"a 2-step reflow student of the trained generator ({words})" if student else words


def _progress(root: Path, step: TrainStep) -> dict:
    ckpt = root / "models" / ("autoencoder" if "train_autoencoder.yaml" in step.configs else "") / "checkpoint_final.pt"
    return trainer_progress(ckpt) if ckpt.is_file() else {}


def _summary(datalist: Path) -> dict:
    return json.loads(datalist.read_text())["summary"]


def _zoo_hash(zoo: Path | None) -> str | None:
    return None if zoo is None else (zoo / ".source.sha256").read_text()[:16]


def _hide(overrides: dict, out: Path) -> dict:
    """Overrides with the run folder written as ``<run>`` (records and MLflow params hold no absolute paths)."""
    text = json.dumps(overrides, default=str).replace(str(out), "<run>").replace(str(REPO), "<repo>")
    return json.loads(text)


def _cause(log: Path, start: int = 0) -> str:
    """The line of a failed bundle run's log (from byte ``start``) that says why: its own one-line error, else the last
    line."""
    text = log.read_bytes()[start:].decode(errors="replace") if log.is_file() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1]


def _audit_digest(audit: dict) -> dict:
    """The audit facts the report and the data card use."""
    from cmrsynth.audit import strongest

    digest = {"members": audit["members"], "non_members": audit["non_members"]}
    name, m = strongest(audit["membership"])
    digest.update(strongest=name, strongest_auc=m["auc"]["value"], strongest_ci95=m["auc"]["ci95"],
                  strongest_tpr_1pct=m["tpr_at_1pct_fpr"]["value"])
    if "membership_slices" in audit:
        name, m = strongest(audit["membership_slices"])
        digest.update(slice_strongest=name, slice_auc=m["auc"]["value"], slice_ci95=m["auc"]["ci95"],
                      slice_tpr_1pct=m["tpr_at_1pct_fpr"]["value"], slice_tpr_01pct=m["tpr_at_0.1pct_fpr"]["value"])
    if "reconstruction" in audit:
        name, m = strongest(audit["reconstruction"]["membership"])
        digest.update(reconstruction_auc=m["auc"]["value"], reconstruction_ci95=m["auc"]["ci95"])
    leak = audit.get("leakage", {})
    for space in ("pixel", "feature", "masks"):
        if space in leak:
            digest[f"near_copies_{space}"] = leak[space]["near_copies"]
            digest[f"synthetic_{space}"] = leak[space]["synthetic"]
    return digest


def _headline(facts: dict) -> dict:
    out = {}
    for key, r in facts["utility"].items():
        for metric in ("ED/dice_lv", "ED/dice_rv", "ED/dice_myo"):
            if metric in r["summary"]:
                out[f"{key.replace('/', '.').replace('+', '_')}.{metric.replace('/', '_')}"] = r["summary"][metric]["mean"]
    for name, a in facts["privacy"].items():
        out[f"{name}.strongest_auc"] = a["strongest_auc"]
    return out

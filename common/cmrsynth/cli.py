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
"""``cmr-synth``: the product's command line.

  cmr-synth run [--input COHORT --reader acdc|mnms|mnms2|datalist] [--preset demo|cpu64|paper128]
                [--generators ddpm_cmr fm_cmr ldm_cmr] --out runs/demo
  cmr-synth zoo validate|pack|verify|install ...

Bad input ends with one line (``error: <what>: <problem>``) and exit status 2; a rerun resumes where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cmrsynth.data.checks import EXIT_BAD_INPUT, error_line
from cmrsynth.errors import CMRDataError


def _run(args: argparse.Namespace) -> int:
    from cmrsynth.pipeline.presets import GENERATORS
    from cmrsynth.pipeline.run import Pipeline, Request

    req = Request(out=Path(args.out), input=Path(args.input) if args.input else None, reader=args.reader,
                  info_csv=Path(args.info_csv) if args.info_csv else None, preset=args.preset,
                  generators=tuple(args.generators or GENERATORS), seed=args.seed, sampling=args.sampling,
                  real_slices_in_report=not args.no_real_slices)
    facts = Pipeline(req).run()
    out = req.out.absolute()
    usable = facts["report"]["usable"]
    print(f"\nreport: {out / 'report' / 'report.html'} (also report.md, report.csv, report.json); "
          f"{usable} of {facts['report']['generators']} generator(s) usable")
    for name, r in facts["release"].items():
        print(f"released dataset ({name}): {out / 'release' / name} ({r['slices']} slices; MONAI datalist, nnU-Net v2 "
              f"{r['nnunet_dataset']}, data_card.md)")
    print(f"MLflow store: {out / 'mlflow.db'} (mlflow ui --backend-store-uri sqlite:///{out / 'mlflow.db'})")
    return 0


def _zoo(args: argparse.Namespace) -> int:
    from cmrsynth import zoo

    if args.action == "validate":
        for b in args.paths:
            meta = zoo.validate_metadata(b)
            print(f"{b}: metadata valid ({meta['name']} {meta['version']})")
    elif args.action == "pack":
        zoo.pack(args.bundle, args.root, args.weights, args.out, half=args.half)
    elif args.action == "verify":
        entries = zoo.verify(args.paths[0])
        print(f"{args.paths[0]}: {len(entries)} weight file(s) match their sha256")
    elif args.action == "install":
        print(f"installed -> {zoo.install(args.source, args.target)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line (``cmr-synth --help``)."""
    from cmrsynth.pipeline.presets import GENERATORS, PRESETS

    p = argparse.ArgumentParser(prog="cmr-synth", description="synthetic cardiac MRI: generate, measure, release")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the whole pipeline: cohort -> generators -> utility, fidelity, privacy -> release, report")
    run.add_argument("--out", default="runs/demo", help="run folder (everything it writes, the MLflow store included)")
    run.add_argument("--input", default=None, help="your cohort (folder, or datalist JSON); default: the embedded phantoms")
    run.add_argument("--reader", default="acdc", choices=["acdc", "mnms", "mnms2", "datalist"])
    run.add_argument("--info-csv", default=None, help="the M&Ms information CSV (reader mnms)")
    run.add_argument("--preset", default="demo", help=f"budgets: {', '.join(PRESETS)}")
    run.add_argument("--generators", nargs="+", default=None, help=f"image generators to compare (default all: {' '.join(GENERATORS)})")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--sampling", choices=["fast", "teacher"], default=None,
                     help="fast: 2-step reflow students of every generator (default of cpu64 and paper128); teacher: the "
                          "bundles' own samplers (default of demo)")
    run.add_argument("--no-real-slices", action="store_true",
                     help="leave the real training slices out of the report (to share it beyond those who may see the cohort)")
    run.set_defaults(func=_run)
    zoo = sub.add_parser("zoo", help="validate, pack, verify or install bundles")
    zsub = zoo.add_subparsers(dest="action", required=True)
    for action in ("validate", "verify"):
        zsub.add_parser(action).add_argument("paths", nargs="+", help="bundle folders")
    pk = zsub.add_parser("pack")
    pk.add_argument("bundle", help="bundle folder (configs/, docs/)")
    pk.add_argument("root", help="trained run root holding the weights")
    pk.add_argument("out", help="zip to write")
    pk.add_argument("--weights", nargs="+", default=["models/best_ema.pt"], help="weight files relative to root")
    pk.add_argument("--half", action="store_true", help="store the weights' floating-point tensors in float16")
    ins = zsub.add_parser("install")
    ins.add_argument("source", help="packed bundle (zip) or bundle folder")
    ins.add_argument("target", help="folder to install into")
    zoo.set_defaults(func=_zoo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cmr-synth``."""
    from cmrsynth.pipeline.run import StageFailed

    args = build_parser().parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store set-up lines are not the user's business
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except StageFailed as exc:
        print(f"error: {exc}; rerun the same command to resume", file=sys.stderr)
        return 1
    except (CMRDataError, FileExistsError, ValueError) as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a full disk, a file gone: not the input's fault; what is done stays done
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}; rerun the same command to resume", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

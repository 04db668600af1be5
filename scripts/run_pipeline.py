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
"""The main job: ``cmr-synth run`` (the whole pipeline; see cmrsynth.pipeline.run). Without --input it runs the
demo on the embedded phantom cohort.

Examples:
  python scripts/run_pipeline.py --out runs/demo
  python scripts/run_pipeline.py --input ../shared/data/acdc --preset cpu64 --out runs/acdc_cpu64
"""

from __future__ import annotations

import sys

from cmrsynth.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))

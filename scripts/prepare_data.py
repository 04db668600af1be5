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
"""Prepare a cardiac MRI cohort (ACDC, M&Ms, M&Ms-2 or a datalist) into 2D slices and a datalist JSON.

Example: python scripts/prepare_data.py --input ../shared/data/acdc --out data/acdc64 --preset cpu
"""

from __future__ import annotations

import sys

from cmrsynth.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())

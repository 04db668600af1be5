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
"""cmr-synth shared library: readers, preprocessing, phantoms, engines, metrics and tracking."""

from __future__ import annotations

__version__ = "0.2.0"

import importlib

_SUBMODULES = (
    "audit", "benchmark", "bundle_run", "data", "dp", "engines", "errors", "generate", "generative", "labels", "masks", "metrics", "report", "segment",
    "tracking", "transforms",
)


def __getattr__(name: str):
    """Import submodules on first use, so bundle configs can write ``$import cmrsynth`` then ``cmrsynth.engines.X``."""
    if name in _SUBMODULES:
        return importlib.import_module(f"cmrsynth.{name}")
    raise AttributeError(f"module 'cmrsynth' has no attribute {name!r}")

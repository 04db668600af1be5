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
"""One error type for bad input, so every entry point can report it as a single clear line."""

from __future__ import annotations

from pathlib import Path


class CMRDataError(ValueError):
    """Bad input data: names the offending file (or folder) and the problem.

    Args:
        path: the file or folder at fault.
        problem: what is wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def find_data_error(exc: BaseException) -> CMRDataError | None:
    """Return the CMRDataError behind ``exc`` (MONAI's Compose wraps transform errors in RuntimeError), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, CMRDataError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None

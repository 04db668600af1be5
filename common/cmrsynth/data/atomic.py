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
"""Write a whole output folder or file or nothing: build it beside its target, then move it into place.

Every folder written here carries a small manifest (``.cmrsynth-output.json``): ``overwrite`` replaces only a folder
that has one, so a user's own folder (or an input cohort) is never deleted. An output equal to, inside, or containing
an input is refused whatever ``overwrite`` says (``cmrsynth.data.checks.check_output_path``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from cmrsynth.data.checks import check_output_path
from cmrsynth.errors import CMRDataError

#: the manifest that marks a folder as written by cmr-synth (and so replaceable with overwrite)
MANIFEST = ".cmrsynth-output.json"


def is_product_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder cmr-synth wrote (it holds the manifest)."""
    return (Path(path) / MANIFEST).is_file()


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` that replaces ``target`` only if the block succeeds.

    Args:
        target: the folder to create.
        overwrite: replace an existing ``target`` that cmr-synth wrote (it holds the manifest); otherwise an existing
            one is an error.
        inputs: paths the run reads; ``target`` may not equal, lie inside or contain any of them.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False.
        CMRDataError: ``target`` overlaps an input, exists without the manifest (with overwrite), or its parent is not
            writable.
    """
    target = Path(target).absolute()
    check_output_path(target, inputs)
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{target}: output folder exists; pass overwrite to replace it")
        if target.is_symlink() or not is_product_folder(target):
            raise CMRDataError(target, f"exists and was not written by cmr-synth (no {MANIFEST}); overwrite replaces only "
                                       "folders cmr-synth wrote: remove it yourself or choose another output")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise CMRDataError(target.parent, f"cannot create the output here ({exc.strerror or exc})") from None
    try:
        (tmp / MANIFEST).write_text(json.dumps({"written_by": "cmr-synth", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                "folder": target.name}))
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


def _write_atomic(path: str | Path, write, mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str | Path, obj) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    _write_atomic(path, lambda f: json.dump(obj, f, indent=2), "w")


def save_torch_atomic(obj, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename (a crash leaves no torn file)."""
    import torch

    _write_atomic(path, lambda f: torch.save(obj, f), "wb")

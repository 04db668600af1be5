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
"""Bundles that travel: validate a bundle's metadata, pack it with its weights, install and verify one.

A packed bundle is a zip holding one folder ``<bundle>/`` with ``configs/``, ``docs/``, the weights under
``models/`` and ``large_files.yml`` (MONAI's convention) listing each weight file with its sha256. Installing
checks the metadata against the schema the product ships (``cmrsynth/schemas/bundle_metadata.json``; no download)
and every listed hash, in a folder beside the target that replaces it only when all passed: a tampered or missing
file is one clear error and nothing is installed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import yaml

from cmrsynth.data.atomic import atomic_directory
from cmrsynth.errors import CMRDataError

SCHEMA = Path(__file__).parent / "schemas" / "bundle_metadata.json"
LARGE_FILES = "large_files.yml"


def sha256(path: Path) -> str:
    """The sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def validate_metadata(bundle_dir: str | Path) -> dict:
    """Check ``configs/metadata.json`` against the shipped schema; returns the metadata.

    Raises:
        CMRDataError: missing, not JSON, or not valid (naming the first failing field).
    """
    import jsonschema

    path = Path(bundle_dir) / "configs" / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CMRDataError(path, "metadata.json not found: not a bundle folder") from None
    except json.JSONDecodeError as exc:
        raise CMRDataError(path, f"not valid JSON ({exc.msg}, line {exc.lineno})") from None
    errors = sorted(jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(meta), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "top level"
        raise CMRDataError(path, f"metadata does not match the bundle schema at {where}: {errors[0].message}")
    return meta


def pack(bundle_dir: str | Path, run_root: str | Path, weights: list[str], out_zip: str | Path) -> Path:
    """Zip a bundle's configs and docs with trained weights from ``run_root`` (paths relative to it, e.g.
    ``models/best_ema.pt``), listed in ``large_files.yml`` with their sha256."""
    bundle_dir, run_root, out_zip = Path(bundle_dir), Path(run_root), Path(out_zip)
    meta = validate_metadata(bundle_dir)
    name = bundle_dir.name
    entries = []
    for rel in weights:
        if not (run_root / rel).is_file():
            raise CMRDataError(run_root / rel, "weight file to pack not found")
        entries.append({"path": rel, "url": "", "hash_val": sha256(run_root / rel), "hash_type": "sha256"})
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_zip.with_name(out_zip.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for sub in ("configs", "docs"):
            for f in sorted((bundle_dir / sub).rglob("*")):
                if f.is_file():
                    z.write(f, f"{name}/{f.relative_to(bundle_dir)}")
        for e in entries:
            z.write(run_root / e["path"], f"{name}/{e['path']}")
        z.writestr(f"{name}/{LARGE_FILES}", yaml.safe_dump({"large_files": entries}, sort_keys=False))
    tmp.replace(out_zip)
    print(f"packed {name} {meta['version']}: {len(entries)} weight file(s) -> {out_zip}")
    return out_zip


def verify(bundle_dir: str | Path) -> list[dict]:
    """Check the metadata and every file ``large_files.yml`` lists against its sha256; returns the entries.

    Raises:
        CMRDataError: a missing or changed file, naming it and both hashes.
    """
    bundle_dir = Path(bundle_dir)
    validate_metadata(bundle_dir)
    listing = bundle_dir / LARGE_FILES
    if not listing.is_file():
        raise CMRDataError(listing, "no large_files.yml: nothing lists the weights and their hashes")
    entries = (yaml.safe_load(listing.read_text()) or {}).get("large_files", [])
    for e in entries:
        path = bundle_dir / e["path"]
        if not path.is_file():
            raise CMRDataError(path, "listed in large_files.yml but missing")
        got = sha256(path)
        if got != e["hash_val"]:
            raise CMRDataError(path, f"sha256 {got[:16]}... does not match {e['hash_val'][:16]}... in large_files.yml: the file "
                                     "was changed after packing; refusing to install it")
    return entries


def install(source: str | Path, target: str | Path) -> Path:
    """Install a packed bundle (zip) or a bundle folder into ``target`` after verifying it; nothing is left in
    ``target`` when verification fails."""
    source, target = Path(source), Path(target)
    if not source.exists():
        raise CMRDataError(source, "bundle to install not found")
    with tempfile.TemporaryDirectory() as staging:
        if source.is_file():
            try:
                with zipfile.ZipFile(source) as z:
                    _safe_extract(z, Path(staging))
            except zipfile.BadZipFile:
                raise CMRDataError(source, "not a zip file (a packed bundle is a zip)") from None
            tops = [p for p in Path(staging).iterdir()]
            if len(tops) != 1 or not tops[0].is_dir():
                raise CMRDataError(source, "a packed bundle holds exactly one top-level folder")
            folder = tops[0]
        else:
            folder = source
        verify(folder)
        with atomic_directory(target, overwrite=True) as tmp:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
    return target


def _safe_extract(z: zipfile.ZipFile, dest: Path) -> None:
    """Extract refusing members that would land outside ``dest`` (absolute paths, ``..``)."""
    for member in z.namelist():
        resolved = (dest / member).resolve()
        if dest.resolve() not in resolved.parents and resolved != dest.resolve():
            raise CMRDataError(member, "a packed bundle member points outside its folder")
    z.extractall(dest)

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
``models/``, ``large_files.yml`` (MONAI's convention) listing each weight file with its sha256, and ``files.sha256``
listing every other file (configs run as code: they are checked too). Installing checks the metadata against the
schema the product ships (``cmrsynth/schemas/bundle_metadata.json``; no download) and every hash, in a folder beside
the target that replaces it only when all passed: a tampered, missing or unlisted file is one clear error and
nothing is installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import yaml

from cmrsynth.data.atomic import MANIFEST, atomic_directory
from cmrsynth.errors import CMRDataError

SCHEMA = Path(__file__).parent / "schemas" / "bundle_metadata.json"
LARGE_FILES = "large_files.yml"
CHECKSUMS = "files.sha256"


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


def half_precision(path: Path) -> bytes:
    """A checkpoint re-saved with its float32 tensors in float16 (half the bytes); containers (a state dict's type and
    ``_metadata`` included) and everything else unchanged. ``load_state_dict`` casts them back into a float32
    network, so nothing that loads weights needs to know.

    Raises:
        CMRDataError: not a weights-only checkpoint, or a value float16 cannot hold (naming the tensor).
    """
    import torch

    def halve(value, name: str):
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
            half = value.half()
            if not torch.isfinite(half).all() and torch.isfinite(value).all():
                raise CMRDataError(path, f"{name} holds values float16 cannot represent (|x| > 65504): pack without --half")
            return half
        if isinstance(value, dict):
            out = type(value)((k, halve(v, f"{name}.{k}")) for k, v in value.items())
            if hasattr(value, "_metadata"):
                out._metadata = value._metadata
            return out
        if isinstance(value, (list, tuple)):
            return type(value)(halve(v, f"{name}[{i}]") for i, v in enumerate(value))
        return value

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file it cannot read as weights
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CMRDataError(path, f"not a weights-only PyTorch checkpoint ({first})") from None
    buffer = io.BytesIO()
    torch.save(halve(state, "checkpoint"), buffer)
    return buffer.getvalue()


def pack(bundle_dir: str | Path, run_root: str | Path, weights: list[str], out_zip: str | Path, half: bool = False) -> Path:
    """Zip a bundle's configs and docs with trained weights from ``run_root`` (paths relative to it, e.g.
    ``models/best_ema.pt``), listed in ``large_files.yml`` with their sha256; ``half`` stores them in float16."""
    bundle_dir, run_root, out_zip = Path(bundle_dir), Path(run_root), Path(out_zip)
    meta = validate_metadata(bundle_dir)
    name = bundle_dir.name
    entries, halved = [], {}
    for rel in weights:
        if not (run_root / rel).is_file():
            raise CMRDataError(run_root / rel, "weight file to pack not found")
        if half:
            halved[rel] = half_precision(run_root / rel)
            digest = hashlib.sha256(halved[rel]).hexdigest()
        else:
            digest = sha256(run_root / rel)
        entries.append({"path": rel, "url": "", "hash_val": digest, "hash_type": "sha256"})
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_zip.with_name(out_zip.name + ".tmp")
    texts = [f for sub in ("configs", "docs") for f in sorted((bundle_dir / sub).rglob("*")) if f.is_file()]
    listing = yaml.safe_dump({"large_files": entries}, sort_keys=False)
    checksums = "".join(f"{sha256(f)}  {f.relative_to(bundle_dir).as_posix()}\n" for f in texts)
    checksums += f"{hashlib.sha256(listing.encode()).hexdigest()}  {LARGE_FILES}\n"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in texts:
            z.write(f, f"{name}/{f.relative_to(bundle_dir).as_posix()}")
        for e in entries:
            if e["path"] in halved:
                z.writestr(f"{name}/{e['path']}", halved[e["path"]])
            else:  # streamed: a training checkpoint can be large
                z.write(run_root / e["path"], f"{name}/{e['path']}")
        z.writestr(f"{name}/{LARGE_FILES}", listing)
        z.writestr(f"{name}/{CHECKSUMS}", checksums)
    tmp.replace(out_zip)
    print(f"packed {name} {meta['version']}: {len(entries)} weight file(s){' in float16' if half else ''} -> {out_zip}")
    return out_zip


def verify(bundle_dir: str | Path) -> list[dict]:
    """Check the metadata and every file ``large_files.yml`` lists against its sha256; returns the entries.

    Raises:
        CMRDataError: a missing or changed file, naming it and both hashes.
    """
    bundle_dir = Path(bundle_dir)
    for required in (LARGE_FILES, CHECKSUMS):
        if not (bundle_dir / required).is_file():
            raise CMRDataError(bundle_dir / required, "missing: a packed bundle lists every file with its sha256")
    entries = _large_files(bundle_dir / LARGE_FILES)
    expected = {e["path"]: e["hash_val"] for e in entries}
    for line in (bundle_dir / CHECKSUMS).read_text().splitlines():
        digest, _, rel = line.partition("  ")
        expected[rel] = digest
    for rel, digest in expected.items():
        path = (bundle_dir / rel).resolve()
        if bundle_dir.resolve() not in path.parents:
            raise CMRDataError(bundle_dir / rel, "a listed file points outside the bundle folder")
        if not path.is_file():
            raise CMRDataError(path, "listed with its sha256 but missing")
        got = sha256(path)
        if got != digest:
            raise CMRDataError(path, f"sha256 {got[:16]}... does not match {digest[:16]}... listed when packed: the file "
                                     "was changed after packing; refusing to install it")
    unlisted = sorted(p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*")
                      if p.is_file() and p.relative_to(bundle_dir).as_posix() not in {*expected, CHECKSUMS, MANIFEST, ".source.sha256"})
    if unlisted:
        raise CMRDataError(bundle_dir / unlisted[0], "not listed when the bundle was packed: refusing to install it")
    validate_metadata(bundle_dir)
    return entries


def _large_files(path: Path) -> list[dict]:
    """The entries of a large_files.yml, each with a relative ``path`` and a sha256 ``hash_val``."""
    try:
        entries = (yaml.safe_load(path.read_text()) or {}).get("large_files", [])
        ok = isinstance(entries, list) and all(isinstance(e, dict) and isinstance(e.get("path"), str) and
                                               e.get("hash_type") == "sha256" and isinstance(e.get("hash_val"), str) for e in entries)
    except (yaml.YAMLError, AttributeError):
        ok = False
    if not ok:
        raise CMRDataError(path, "not a large_files.yml of cmr-synth: a list 'large_files' of {path, hash_val, hash_type: sha256}")
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
        with atomic_directory(target, overwrite=True, inputs=[source]) as tmp:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
    return target


def _safe_extract(z: zipfile.ZipFile, dest: Path) -> None:
    """Extract refusing members that would land outside ``dest`` (absolute paths, ``..``)."""
    for member in z.namelist():
        resolved = (dest / member).resolve()
        if dest.resolve() not in resolved.parents and resolved != dest.resolve():
            raise CMRDataError(member, "a packed bundle member points outside its folder")
    z.extractall(dest)

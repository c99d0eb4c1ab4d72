"""Install align from a wheelhouse on a machine without internet: verify every hash, then pip --no-index.

Runs with the node's own ``python3`` and the standard library alone (align is not installed yet), so
``make wheelhouse`` copies this file into every wheelhouse. It is also the one place that knows the
wheelhouse's on-disk format, which the builder (``align.wheelhouse.build``) imports:

- ``manifest.json``: every wheel's file name, name, version, sha256 and size, whether pip resolves
  its dependencies (``deps``), and the packages skipped because the node already has them.
- optional parts: ``NAME.tar`` (the wheelhouse folder) cut into ``NAME.tar.000``, ``NAME.tar.001``...
  of at most a given size, with ``NAME.parts.json`` holding each part's sha256 and the whole tar's.
  ``cat NAME.tar.* > NAME.tar`` joins them too; this script also checks every hash on the way.

Install: the wheels with ``deps: true`` are pinned in one ``pip install --no-index --find-links``, so
pip checks that the wheelhouse plus the packages already installed satisfy every dependency (a
wheel that is missing fails the install instead of breaking an import later). Wheels with
``deps: false`` go in afterwards with ``--no-deps``: align (its metadata pins the CPU torch of the
project's own venv) and mamba_ssm (its metadata pulls in Mamba3-only packages).

    python3 install_offline.py WHEELHOUSE_OR_PARTS_DIR [--dry-run] [--python PYTHON]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

MANIFEST = "manifest.json"
PARTS_SUFFIX = ".parts.json"
_CHUNK = 1 << 20


class WheelhouseError(Exception):
    """A wheelhouse that is incomplete, corrupted or does not fit this node; the message says which file."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def canonical_name(name: str) -> str:
    """PEP 503 normalized project name (what ``packaging.utils.canonicalize_name`` returns)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------- parts


def split_file(path: Path, part_bytes: int) -> Path:
    """Cut ``path`` into ``path.000``, ``path.001``... of at most ``part_bytes``; write the parts index.

    The index (``<stem>.parts.json`` beside the parts) records each part's size and sha256 and the
    whole file's, so a part that is missing, truncated or swapped is named on join. Returns the
    index's path; ``path`` itself is removed.
    """
    if part_bytes <= 0:
        raise ValueError(f"part size must be positive, got {part_bytes}")
    whole, parts = hashlib.sha256(), []
    with path.open("rb") as src:
        while True:
            part = path.with_name(f"{path.name}.{len(parts):03d}")
            h, size = hashlib.sha256(), 0
            with part.open("wb") as dst:
                while size < part_bytes and (block := src.read(min(_CHUNK, part_bytes - size))):
                    dst.write(block)
                    h.update(block)
                    whole.update(block)
                    size += len(block)
            if size == 0:
                part.unlink()
                break
            parts.append({"file": part.name, "size": size, "sha256": h.hexdigest()})
    index = path.with_name(path.name.removesuffix(".tar") + PARTS_SUFFIX)
    total = sum(p["size"] for p in parts)
    index.write_text(json.dumps({"archive": path.name, "size": total, "sha256": whole.hexdigest(), "parts": parts}, indent=1) + "\n")
    path.unlink()
    return index


def join_parts(index: Path, out: Path) -> Path:
    """Check every part named by ``index`` and concatenate them into ``out``; returns ``out``."""
    meta = json.loads(index.read_text())
    whole = hashlib.sha256()
    with out.open("wb") as dst:
        for p in meta["parts"]:
            part = index.parent / p["file"]
            if not part.is_file():
                raise WheelhouseError(f"{index}: part {p['file']} is missing from {index.parent}: copy every part listed there")
            data_hash, size = hashlib.sha256(), 0
            with part.open("rb") as src:
                while block := src.read(_CHUNK):
                    data_hash.update(block)
                    whole.update(block)
                    dst.write(block)
                    size += len(block)
            if size != p["size"] or data_hash.hexdigest() != p["sha256"]:
                raise WheelhouseError(
                    f"{part}: {size} bytes, sha256 {data_hash.hexdigest()}; {index.name} expects {p['size']} bytes, "
                    f"sha256 {p['sha256']}: the part is truncated or corrupted, copy it again"
                )
    if whole.hexdigest() != meta["sha256"]:
        raise WheelhouseError(f"{out}: the joined parts do not hash to {meta['sha256']} ({index}): parts from two wheelhouses?")
    return out


def unpack(index: Path, dest: Path) -> Path:
    """Join the parts named by ``index`` and extract the wheelhouse under ``dest``; returns its folder."""
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = join_parts(index, Path(tmp) / "wheelhouse.tar")
        with tarfile.open(archive) as tar:
            tops = {Path(m.name).parts[0] for m in tar.getmembers()}
            if len(tops) != 1:
                raise WheelhouseError(f"{index}: the archive should hold one wheelhouse folder, holds {sorted(tops)}")
            tar.extractall(dest, filter="data")
    return dest / tops.pop()


# ---------------------------------------------------------------------------- wheels


def verify(folder: Path) -> dict:
    """Check every wheel in ``folder``'s manifest (present, size, sha256) and that no other wheel lies there."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise WheelhouseError(f"{folder}: no {MANIFEST}: pass a folder made by `make wheelhouse` (or the folder of its parts)")
    manifest = json.loads(manifest_path.read_text())
    listed = set()
    for w in manifest["wheels"]:
        path = folder / w["file"]
        listed.add(w["file"])
        if not path.is_file():
            raise WheelhouseError(f"{manifest_path}: {w['file']} is missing from {folder}")
        digest = sha256_file(path)
        if digest != w["sha256"]:
            raise WheelhouseError(f"{path}: sha256 {digest}, the manifest says {w['sha256']}: the file is corrupted, copy it again")
    extra = sorted(p.name for p in folder.glob("*.whl") if p.name not in listed)
    if extra:
        raise WheelhouseError(f"{folder}: wheels not in {MANIFEST}: {extra}: remove them (two versions of one package stop pip)")
    return manifest


def pip_commands(folder: Path, manifest: dict, python: str) -> list[list[str]]:
    """The pip commands that install the wheelhouse: the resolved set with dependency checks, then the rest."""
    base = [python, "-m", "pip", "install", "--no-index", "--find-links", str(folder), "--no-cache-dir", "--disable-pip-version-check"]
    resolved = [f"{w['name']}=={w['version']}" for w in manifest["wheels"] if w["deps"]]
    loose = [str(folder / w["file"]) for w in manifest["wheels"] if not w["deps"]]
    commands = [base + resolved] if resolved else []
    if loose:
        commands.append(base + ["--no-deps", *loose])
    return commands


def _wheelhouse_only_env() -> dict[str, str]:
    """The environment for pip with no package source but the wheelhouse: a node's pip config files
    or ``PIP_*`` variables can name find-links folders or indexes that would mix other wheels in."""
    sources = {"PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"}
    return {k: v for k, v in os.environ.items() if k not in sources} | {"PIP_CONFIG_FILE": os.devnull}


def install(path: Path, python: str = sys.executable, dry_run: bool = False) -> Path:
    """Verify and install the wheelhouse at ``path`` (a wheelhouse folder, or a folder of its parts)."""
    if not (path / MANIFEST).is_file():
        indexes = sorted(path.glob("*" + PARTS_SUFFIX))
        if len(indexes) != 1:
            raise WheelhouseError(f"{path}: expected {MANIFEST} or exactly one *{PARTS_SUFFIX}, found {[i.name for i in indexes]}")
        path = unpack(indexes[0], path)
        print(f"joined and unpacked {indexes[0].name} into {path}")
    manifest = verify(path)
    print(f"verified {len(manifest['wheels'])} wheels in {path} (target {manifest['target']}); skipped as already on the node: {len(manifest['skipped'])}")
    for cmd in pip_commands(path, manifest, python):
        print("+", " ".join(cmd[:12]), "..." if len(cmd) > 12 else "", flush=True)
        if not dry_run and subprocess.run(cmd, env=_wheelhouse_only_env()).returncode != 0:
            raise WheelhouseError(
                f"pip failed on the wheelhouse {path} (above). 'No matching distribution' for a package means this node lacks "
                "one the wheelhouse was built to skip: run `python3 -m pip freeze > installed.txt` here and rebuild with INSTALLED=installed.txt"
            )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("path", type=Path, help="a wheelhouse folder (with manifest.json) or a folder of its parts")
    p.add_argument("--python", default=sys.executable, help="the interpreter to install into (default: this one)")
    p.add_argument("--dry-run", action="store_true", help="verify the hashes and print the pip commands only")
    args = p.parse_args(argv)
    try:
        install(args.path.resolve(), args.python, args.dry_run)
    except WheelhouseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A container's CRIU images as one file: a zstd tar with a sha256 manifest of its members.

The file is validated like any archive from outside (safe extraction, then every member checked
against the manifest) before a restore touches anything.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import zstandard

from agent.errors import Kind, VzError
from agent.migration import images
from agent.storage.archive import ArchiveError, extract_archive

MANIFEST = "vzfleet-dump.json"


def write(image_dir: Path, dumpfile: Path, ctid: int) -> int:
    """Pack image_dir into dumpfile (atomically); returns its size."""
    meta = {"ctid": ctid, "files": images.manifest(image_dir)}
    (image_dir / MANIFEST).write_text(json.dumps(meta))
    blob, _, _ = images.pack(image_dir, level=3)
    dumpfile.parent.mkdir(parents=True, exist_ok=True)
    tmp = dumpfile.with_name(f".{dumpfile.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, dumpfile)
    return len(blob)


def read(dumpfile: Path, image_dir: Path) -> int:
    """Unpack and verify dumpfile into image_dir; returns the CTID it was made from."""
    if not dumpfile.is_file():
        raise VzError(Kind.NOT_FOUND, f"no dump file {dumpfile}")
    shutil.rmtree(image_dir, ignore_errors=True)
    image_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        extract_archive(dumpfile, image_dir, images.IMAGE_LIMITS)
    except (ArchiveError, zstandard.ZstdError) as e:
        shutil.rmtree(image_dir, ignore_errors=True)
        raise VzError(Kind.INVALID, f"corrupt dump file {dumpfile}: {e}") from None
    try:
        meta = json.loads((image_dir / MANIFEST).read_text())
        files = dict(meta["files"])
        ctid = int(meta["ctid"])
    except (OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(image_dir, ignore_errors=True)
        raise VzError(Kind.INVALID, f"{dumpfile} is not a vzfleet dump file (no manifest)") from None
    got = images.manifest(image_dir)
    got.pop(MANIFEST, None)
    if got != files:
        shutil.rmtree(image_dir, ignore_errors=True)
        raise VzError(Kind.INVALID, f"dump file {dumpfile} does not match its manifest (corrupt)")
    return ctid

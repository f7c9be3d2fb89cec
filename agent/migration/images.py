"""CRIU image directories on the wire: tar + zstd, with a sha256 manifest checked before restore."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import zstandard

from agent.errors import Kind, VzError
from agent.storage.archive import ArchiveError, Limits, extract_archive

CHUNK = 1 << 20
# a CRIU image set is a flat directory of regular files; bound what a peer may make us write
IMAGE_LIMITS = Limits(max_total_bytes=64 << 30, max_members=100_000, max_depth=256)


def zstd_level_for(bytes_per_second: float | None) -> int:
    """Compression level for the measured link speed: cheap on fast links, tighter on slow ones."""
    if bytes_per_second is None or bytes_per_second >= 300e6:
        return 1
    if bytes_per_second >= 50e6:
        return 3
    return 6


def manifest(image_dir: Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file (and "->target" of every symlink), recursively."""
    out = {}
    for dirpath, dirs, files in os.walk(image_dir):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if (Path(dirpath) / d).is_symlink()]:
            p = Path(dirpath) / name
            rel = str(p.relative_to(image_dir))
            if p.is_symlink():
                out[rel] = "->" + os.readlink(p)
            elif p.is_file():
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while block := f.read(CHUNK):
                        h.update(block)
                out[rel] = h.hexdigest()
    return out


def pack(image_dir: Path, level: int = 1) -> tuple[bytes, dict[str, str], int]:
    """(zstd-compressed tar of the image files, manifest, uncompressed tar size)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(image_dir.iterdir()):
            tar.add(p, arcname=p.name, recursive=True)
    data = raw.getvalue()
    comp = zstandard.ZstdCompressor(level=level, threads=-1).compress(data)
    return comp, manifest(image_dir), len(data)


def chunks(blob: bytes) -> Iterator[bytes]:
    for i in range(0, len(blob), CHUNK):
        yield blob[i:i + CHUNK]


def unpack(stream_file: Path, image_dir: Path, expected: Mapping[str, str]) -> None:
    """Extract a received stream safely and check it file by file against the manifest.

    Raises VzError(INVALID) for a corrupt, truncated or mismatching stream; image_dir is removed then.
    """
    if not expected:
        raise VzError(Kind.INVALID, "image stream ended without its manifest (truncated transfer)")
    shutil.rmtree(image_dir, ignore_errors=True)
    try:
        extract_archive(stream_file, image_dir, IMAGE_LIMITS)
    except ArchiveError as e:
        raise VzError(Kind.INVALID, f"corrupt image stream: {e}") from None
    except zstandard.ZstdError as e:
        shutil.rmtree(image_dir, ignore_errors=True)
        raise VzError(Kind.INVALID, f"corrupt image stream: {e}") from None
    got = manifest(image_dir)
    if got != dict(expected):
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        bad = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        shutil.rmtree(image_dir, ignore_errors=True)
        raise VzError(Kind.INVALID, "image stream does not match its manifest"
                      + (f"; missing {missing[:3]}" if missing else "")
                      + (f"; unexpected {extra[:3]}" if extra else "")
                      + (f"; checksum mismatch {bad[:3]}" if bad else ""))
    os.chmod(image_dir, 0o700)

"""Atomic writers for audit outputs, built on :func:`medground.store.atomic_path`."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from medground.store import atomic_path, write_text_atomic

__all__ = ["save_png_atomic", "sha256_file", "write_bytes_atomic", "write_text_atomic"]


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def save_png_atomic(image: Image.Image, path: Path) -> None:
    """Save a Pillow image as PNG at ``path`` atomically."""
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

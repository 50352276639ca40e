"""Find a dataset's images and pair each with its mask files.

Mask paths are templates rendered from the image's relative path, e.g.
``{dir}/{stem}_mask*.png``. Values are glob-escaped before the template's own wildcards
are matched, so file names with spaces, brackets or parentheses pair correctly.
"""

from __future__ import annotations

import glob
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from medground.config.manifest import Manifest

logger = logging.getLogger(__name__)

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ImageItem:
    """One image and its mask files, all paths relative to the dataset root (POSIX)."""

    index: int
    image: str
    masks: tuple[tuple[str, ...], ...]
    case_id: str
    placeholders: dict[str, str] = field(hash=False)

    @property
    def all_masks(self) -> list[str]:
        """Every mask file of every source, in declaration order."""
        return [path for files in self.masks for path in files]


@dataclass
class Discovery:
    """The outcome of pairing: paired items and what could not be paired."""

    items: list[ImageItem]
    unpaired_images: list[tuple[str, str]]
    unpaired_masks: list[str]
    unmatched_images: list[str]


def safe_id(text: str) -> str:
    """Turn a case name into an id segment: spaces and punctuation become '_'."""
    cleaned = _UNSAFE_ID_CHARS.sub("_", text).strip("_")
    return cleaned or "case"


def placeholders_for(relative: str, pattern: re.Pattern[str] | None) -> dict[str, str] | None:
    """Return the template values of one image path, or None when ``pattern`` does not match."""
    path = PurePosixPath(relative)
    values = {
        "stem": path.stem,
        "name": path.name,
        "suffix": path.suffix,
        "dir": str(path.parent),
        "parent": str(path.parent.parent),
    }
    if pattern is not None:
        match = pattern.search(relative)
        if match is None:
            return None
        values.update({k: v for k, v in match.groupdict().items() if v is not None})
    return values


def render_template(template: str, values: dict[str, str], escape: bool) -> str:
    """Fill a path template; with ``escape`` the values are glob-escaped first."""
    if escape:
        values = {k: glob.escape(v) for k, v in values.items()}
    return template.format(**values)


def _glob(root: Path, pattern: str) -> list[str]:
    found = glob.glob(pattern, root_dir=root, recursive=True)
    return sorted(PurePosixPath(p).as_posix() for p in found if (root / p).is_file())


def discover(manifest: Manifest, root: Path) -> Discovery:
    """Pair images with masks as the manifest declares.

    Images are sorted by relative path so that indices, ids and output order are the
    same on every run and every machine.
    """
    patterns = (
        [manifest.images.glob]
        if isinstance(manifest.images.glob, str)
        else list(manifest.images.glob)
    )
    images: set[str] = set()
    for pattern in patterns:
        images.update(_glob(root, pattern))
    excluded = {p for pattern in manifest.images.exclude for p in _glob(root, pattern)}
    image_paths = sorted(images - excluded)
    regex = re.compile(manifest.images.pattern) if manifest.images.pattern else None

    items: list[ImageItem] = []
    unpaired: list[tuple[str, str]] = []
    unmatched: list[str] = []
    claimed: set[str] = set()
    for relative in image_paths:
        values = placeholders_for(relative, regex)
        if values is None:
            unmatched.append(relative)
            continue
        values["case"] = safe_id(render_template(manifest.images.case_id, values, escape=False))
        masks: list[tuple[str, ...]] = []
        missing: list[str] = []
        for source in manifest.masks:
            rendered = render_template(source.path, values, escape=True)
            files = tuple(f for f in _glob(root, rendered) if f != relative)
            if not files and source.required:
                missing.append(render_template(source.path, values, escape=False))
            masks.append(files)
        if missing:
            unpaired.append((relative, "no mask file matches " + ", ".join(missing)))
            continue
        claimed.update(f for files in masks for f in files)
        items.append(ImageItem(len(items), relative, tuple(masks), values["case"], values))

    unpaired_masks = sorted(_candidate_masks(manifest, root) - claimed - set(image_paths))
    logger.debug(
        "discovered %d paired images, %d unpaired images, %d unpaired masks under %s",
        len(items),
        len(unpaired),
        len(unpaired_masks),
        root,
    )
    return Discovery(items, unpaired, unpaired_masks, unmatched)


def _candidate_masks(manifest: Manifest, root: Path) -> set[str]:
    """Every file any mask template could name, found by turning placeholders into globs."""
    wildcard = {name: "*" for name in ("stem", "name", "suffix", "case")}
    wildcard.update({"dir": "**", "parent": "**"})
    wildcard.update({name: "*" for name in manifest.images.group_names()})
    found: set[str] = set()
    for source in manifest.masks:
        pattern = source.path.format(**wildcard)
        pattern = re.sub(r"\*{3,}", "**", pattern)
        found.update(_glob(root, pattern))
    return found

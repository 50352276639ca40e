"""Pieces every export format shares: options, image materialisation, per-split grouping, README."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from medground import boxes as box_ops
from medground.export.runs import provenance_summary, write_text_atomic
from medground.store import atomic_path

logger = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "val", "test", "unsplit")
LinkMode = Literal["copy", "hardlink"]


class ExportError(ValueError):
    """An export that cannot be written as requested. The message names what to change."""


@dataclass(frozen=True)
class ResizeSettings:
    """Qwen2.5-VL processor settings that decide the resized image size."""

    factor: int = box_ops.QWEN25VL_FACTOR
    min_pixels: int = box_ops.QWEN25VL_MIN_PIXELS
    max_pixels: int = box_ops.QWEN25VL_MAX_PIXELS

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """Return ``(resized_width, resized_height)`` for an original ``width x height``.

        Raises:
            ExportError: if Qwen2.5-VL's processor would reject the image or the settings.
        """
        try:
            resized_height, resized_width = box_ops.smart_resize(
                height, width, self.factor, self.min_pixels, self.max_pixels
            )
        except ValueError as exc:
            raise ExportError(f"cannot compute the Qwen2.5-VL resized size: {exc}") from exc
        return resized_width, resized_height

    def describe(self) -> str:
        """Return the settings as the processor arguments a user passes."""
        return (
            f"min_pixels={self.min_pixels}, max_pixels={self.max_pixels}, "
            f"factor={self.factor} (patch_size 14 x merge_size 2)"
        )


@dataclass(frozen=True)
class ExportOptions:
    """Settings of one export run."""

    out_dir: Path
    link: LinkMode = "copy"
    # Box markup of the assistant responses, read by llama-factory only.
    markup: str | None = None
    resize: ResizeSettings = field(default_factory=ResizeSettings)
    run_sources: tuple[Path, ...] = ()


@dataclass
class ExportResult:
    """Files and per-split record counts of one export."""

    format: str
    out_dir: Path
    files: list[Path]
    counts: dict[str, int]


def split_name(record: dict[str, Any]) -> str:
    """Return the record's split, or ``unsplit`` when the run did not assign one."""
    return record.get("split") or "unsplit"


def group_by_split(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Group records by split in train, val, test, unsplit order."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[split_name(record)].append(record)
    if "unsplit" in groups:
        logger.warning(
            "%d records have no split; they are written as split 'unsplit'. Add a split: "
            "block to the manifest and rerun to get train/val/test files",
            len(groups["unsplit"]),
        )
    return {name: groups[name] for name in SPLIT_ORDER if name in groups}


def target_boxes(record: dict[str, Any]) -> np.ndarray:
    """Return the record's target boxes as ``(N, 4)`` pixel ``xyxy`` of the original image."""
    return box_ops.as_boxes([target["bbox_xyxy"] for target in record["targets"]])


def target_labels(record: dict[str, Any]) -> list[str]:
    """Return the class of each target, in target order."""
    return [target["class"] for target in record["targets"]]


def image_size(record: dict[str, Any]) -> tuple[int, int]:
    """Return ``(width, height)`` of the record's image."""
    return int(record["image"]["width"]), int(record["image"]["height"])


def check_image_size(source: Path, record: dict[str, Any]) -> None:
    """Raise ExportError unless the image file's size equals the record's width and height."""
    with Image.open(source) as image:
        actual = image.size
    expected = image_size(record)
    if actual != expected:
        raise ExportError(
            f"image {source} is {actual[0]} x {actual[1]} pixels but record "
            f"{record['id']!r} says {expected[0]} x {expected[1]}; its boxes would be "
            "in the wrong coordinate space. Rerun 'mgr run' on the current images"
        )


class ImageStore:
    """Copies or hard-links each source image once into ``<out>/images/<dataset>/``.

    The stored name is ``<first 12 hex of sha256(absolute path)>_<file name>`` so two
    sources with the same file name do not collide. Before storing, the image header is
    read and its size compared with the record's ``image.width`` and ``image.height``,
    because a mismatch would put every box in the wrong place.
    """

    def __init__(self, out_dir: Path, link: LinkMode) -> None:
        self.out_dir = out_dir
        self.link = link
        self._stored: dict[str, str] = {}

    def add(self, record: dict[str, Any]) -> str:
        """Store the record's image and return its path relative to the export folder."""
        source = Path(record["image"]["path"])
        key = str(source)
        if key in self._stored:
            return self._stored[key]
        if not source.is_file():
            raise ExportError(
                f"image {source} of record {record['id']!r} not found; the run folder "
                "refers to images by absolute path, so export on the machine that ran it "
                "or restore the dataset at that path"
            )
        check_image_size(source, record)

        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        relative = Path("images") / record["dataset"] / f"{digest}_{source.name}"
        self._materialise(source, self.out_dir / relative)
        self._stored[key] = relative.as_posix()
        return self._stored[key]

    def _materialise(self, source: Path, destination: Path) -> None:
        with atomic_path(destination) as temporary:
            if self.link == "hardlink":
                temporary.unlink()
                try:
                    os.link(source, temporary)
                except OSError as exc:
                    raise ExportError(
                        f"cannot hard-link {source} into {destination.parent} ({exc}); "
                        "hard links need one file system. Use --images copy instead"
                    ) from exc
            else:
                shutil.copyfile(source, temporary)


def provenance_markdown(records: list[dict[str, Any]], sources: tuple[Path, ...]) -> str:
    """Render the source runs and their manifests as Markdown."""
    lines = ["## Provenance", ""]
    if sources:
        lines.append("Source runs:")
        lines.append("")
        lines.extend(f"- `{path}`" for path in sources)
        lines.append("")
    lines.append("| manifest | manifest_sha256 | engine_version | records |")
    lines.append("| --- | --- | --- | ---: |")
    for entry in provenance_summary(records):
        lines.append(
            f"| {entry['manifest']} | `{entry['manifest_sha256']}` | "
            f"{entry['engine_version']} | {entry['records']} |"
        )
    return "\n".join(lines) + "\n"


def image_size_markdown(records: list[dict[str, Any]]) -> str:
    """Summarise the original image sizes of the exported records."""
    widths = [image_size(record)[0] for record in records]
    heights = [image_size(record)[1] for record in records]
    return (
        f"Original image sizes: width {min(widths)}..{max(widths)} px, "
        f"height {min(heights)}..{max(heights)} px (per record in `width` / `height` "
        "where the format has room for it)."
    )


def write_readme(
    options: ExportOptions,
    records: list[dict[str, Any]],
    title: str,
    coordinate_space: str,
    image_sizes: str,
    files: list[Path],
    usage: str,
    front_matter: str = "",
) -> Path:
    """Write the export's README.md stating coordinate space, image size and provenance."""
    counts = {name: len(group) for name, group in group_by_split(records).items()}
    file_lines = "\n".join(
        f"- `{path.relative_to(options.out_dir).as_posix()}`" for path in sorted(files)
    )
    text = (
        f"{front_matter}# {title}\n\n"
        f"Exported by `mgr export` from {len(records)} MedGround records "
        f"({', '.join(f'{name}: {count}' for name, count in counts.items())}).\n\n"
        f"## Coordinate space\n\n{coordinate_space}\n\n"
        f"## Image size\n\n{image_sizes}\n\n"
        f"## Files\n\n{file_lines}\n\n"
        f"## Use\n\n{usage}\n\n"
        f"{provenance_markdown(records, options.run_sources)}"
    )
    path = options.out_dir / "README.md"
    write_text_atomic(path, text)
    return path

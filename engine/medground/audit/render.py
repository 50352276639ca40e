"""Render an audit item's image with its target boxes (Pillow).

Boxes are drawn in the original pixel frame, then the image is downscaled for the page,
so a box lands exactly where the record states, whatever the page size. The outline lies
just outside the half-open box ``[x0, y0, x1, y1]`` and leaves the boundary pixels of the
object visible. Number tags are drawn after downscaling so that they stay legible.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medground.audit._files import save_png_atomic

logger = logging.getLogger(__name__)

# Outline colours by target index (RGB hex); the review page uses the same list for its
# legend swatches. Chosen to stand out on grey-scale and endoscopic images.
TARGET_COLORS = ("#ffd400", "#00e5ff", "#ff3df2", "#7cff3d", "#ff8a00", "#3d7cff")
# Outline width on the page, in rendered pixels.
OUTLINE_PX = 3


class ImageRenderError(ValueError):
    """An item's image cannot be read or does not match the size its record states."""


@dataclass(frozen=True)
class RenderedImage:
    """Size of the original image and of its rendered copies."""

    width: int
    height: int
    rendered_width: int
    rendered_height: int
    scale: float


def target_color(index: int) -> str:
    """Return the outline colour of the target at ``index``."""
    return TARGET_COLORS[index % len(TARGET_COLORS)]


def load_rgb(path: Path) -> Image.Image:
    """Open an image as 8-bit RGB, stretching 16-bit and float grey levels to 0-255.

    Raises:
        ImageRenderError: If the file is missing or Pillow cannot read it.
    """
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
    except FileNotFoundError as exc:
        raise ImageRenderError(f"image not found: {path}") from exc
    except OSError as exc:
        raise ImageRenderError(f"cannot read image {path}: {exc}") from exc

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # Min-max stretch is enough to judge a box; the dataset's own window is unknown here.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        span = high - low if high > low else 1.0
        array = np.round((array - low) / span * 255.0).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    return image.convert("RGB")


def render_item_images(
    image_path: Path,
    bboxes_xyxy: Sequence[Sequence[float]],
    boxed_path: Path,
    clean_path: Path,
    *,
    max_side: int,
    expected_size: tuple[int, int] | None = None,
) -> RenderedImage:
    """Write the page copies of one image: with the boxes drawn and without.

    Args:
        image_path: The original image.
        bboxes_xyxy: Boxes in original pixels, half-open, in target order.
        boxed_path: Output PNG with the boxes and number tags.
        clean_path: Output PNG without boxes, at the same size.
        max_side: Maximum length of the copies' longer side in pixels. Smaller images keep
            their size.
        expected_size: ``(width, height)`` the record states, checked against the file.

    Raises:
        ImageRenderError: If the image is unreadable or its size differs from ``expected_size``.
    """
    original = load_rgb(image_path)
    width, height = original.size
    if expected_size is not None and expected_size != (width, height):
        raise ImageRenderError(
            f"{image_path} is {width}x{height} pixels but the record states "
            f"{expected_size[0]}x{expected_size[1]}; its boxes would be misplaced"
        )

    scale = min(1.0, max_side / max(width, height))
    rendered_size = (max(1, round(width * scale)), max(1, round(height * scale)))

    boxed = original.copy()
    _draw_outlines(boxed, bboxes_xyxy, line_width=max(1, math.ceil(OUTLINE_PX / scale)))
    if scale < 1.0:
        boxed = boxed.resize(rendered_size, Image.Resampling.LANCZOS)
        clean = original.resize(rendered_size, Image.Resampling.LANCZOS)
    else:
        clean = original
    _draw_tags(boxed, bboxes_xyxy, scale)

    save_png_atomic(boxed, boxed_path)
    save_png_atomic(clean, clean_path)
    return RenderedImage(width, height, rendered_size[0], rendered_size[1], scale)


def _draw_outlines(
    image: Image.Image, bboxes_xyxy: Sequence[Sequence[float]], line_width: int
) -> None:
    draw = ImageDraw.Draw(image)
    for index, (x0, y0, x1, y1) in enumerate(bboxes_xyxy):
        # Pixel columns floor(x0) .. ceil(x1) - 1 belong to the box; the outline's inner
        # edge sits one pixel outside them.
        left = math.floor(x0) - line_width
        top = math.floor(y0) - line_width
        right = math.ceil(x1) - 1 + line_width
        bottom = math.ceil(y1) - 1 + line_width
        draw.rectangle((left, top, right, bottom), outline=target_color(index), width=line_width)


def _draw_tags(image: Image.Image, bboxes_xyxy: Sequence[Sequence[float]], scale: float) -> None:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    for index, (x0, y0, x1, y1) in enumerate(bboxes_xyxy):
        label = str(index + 1)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tag_w, tag_h = math.ceil(right - left) + 6, math.ceil(bottom - top) + 4
        x, y = _tag_position(
            (x0 * scale, y0 * scale, x1 * scale, y1 * scale), (tag_w, tag_h), image.size
        )
        draw.rectangle((x, y, x + tag_w - 1, y + tag_h - 1), fill=target_color(index))
        draw.text((x + 3 - left, y + 2 - top), label, fill="#000000", font=font)


def _tag_position(
    box: tuple[float, float, float, float], tag_size: tuple[int, int], image_size: tuple[int, int]
) -> tuple[int, int]:
    """Place a tag above the box, else below, else left of it; inside only as a last resort.

    The tag should not hide the object, so positions outside the box come first.
    """
    (x0, y0, x1, y1), (tag_w, tag_h), (width, height) = box, tag_size, image_size
    gap = OUTLINE_PX
    x_aligned = max(0, min(width - tag_w, math.floor(x0) - gap))
    y_aligned = max(0, min(height - tag_h, math.floor(y0) - gap))
    candidates = (
        (x_aligned, math.floor(y0) - gap - tag_h),  # above
        (x_aligned, math.ceil(y1) + gap),  # below
        (math.floor(x0) - gap - tag_w, y_aligned),  # left
        (math.ceil(x1) + gap, y_aligned),  # right
    )
    for x, y in candidates:
        if 0 <= x <= width - tag_w and 0 <= y <= height - tag_h:
            return x, y
    return x_aligned, y_aligned

"""Images for VLM requests: loading, resizing, drawing boxes and data URLs.

Boxes are given as ``bbox_xyxy`` in pixels of the original image, continuous and
half-open, and are scaled only when drawn on a resized copy. Masks never pass through
here: only the image sent to the model is resized.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BoxXyxy = tuple[float, float, float, float]


class ImageLoadError(ValueError):
    """An image file that cannot be read or decoded."""


@dataclass(frozen=True)
class PreparedImage:
    """An image resized for a request.

    Attributes:
        image: RGB image, longer side at most the requested maximum.
        original_hw: ``(H, W)`` of the image on disk, the frame of every ``bbox_xyxy``.
        scale: Factor from original pixels to pixels of ``image`` (at most 1).
    """

    image: Image.Image
    original_hw: tuple[int, int]
    scale: float


def load_image_rgb(path: Path) -> Image.Image:
    """Load an image as 8-bit RGB.

    16-bit and float greyscale images (common for CT and MR exports) are stretched
    linearly from their minimum to their maximum, since a plain conversion clips them.

    Raises:
        ImageLoadError: The file is missing or not a readable image.
    """
    image: Image.Image
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened
    except (OSError, ValueError) as exc:
        raise ImageLoadError(f"cannot read image {path}: {exc}") from exc

    if image.mode in {"I", "I;16", "I;16B", "I;16L", "F"}:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        span = high - low if high > low else 1.0
        scaled = ((values - low) / span * 255.0).round().astype(np.uint8)
        image = Image.fromarray(scaled)
    return image.convert("RGB")


def prepare_image(path: Path, max_side_px: int) -> PreparedImage:
    """Load an image and shrink it so that its longer side is at most ``max_side_px``.

    Smaller images are sent as they are, never enlarged.
    """
    image = load_image_rgb(path)
    width, height = image.size
    scale = min(1.0, max_side_px / max(width, height))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return PreparedImage(image=image, original_hw=(height, width), scale=scale)


def png_data_url(image: Image.Image) -> str:
    """Encode an image as a ``data:image/png;base64,...`` URL."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_part(image: Image.Image) -> dict[str, object]:
    """Build an OpenAI-format ``image_url`` message part for an image."""
    return {"type": "image_url", "image_url": {"url": png_data_url(image)}}


def draw_boxes(
    prepared: PreparedImage,
    boxes_xyxy: Sequence[BoxXyxy],
    *,
    colour: str,
    labels: Sequence[str] | None = None,
    base: Image.Image | None = None,
) -> Image.Image:
    """Draw boxes, given in original pixels, on a copy of the resized image.

    Args:
        prepared: The resized image and its scale.
        boxes_xyxy: Half-open boxes in pixels of the original image.
        colour: Outline colour, any PIL colour name or ``#rrggbb``.
        labels: One label per box (e.g. mark numbers), drawn at the box's top-left
            corner on a filled background.
        base: Image to draw on instead of ``prepared.image`` (to add a second colour).

    Returns:
        A new RGB image; ``prepared.image`` and ``base`` are not changed.
    """
    if labels is not None and len(labels) != len(boxes_xyxy):
        raise ValueError(f"got {len(labels)} labels for {len(boxes_xyxy)} boxes")
    canvas = (base if base is not None else prepared.image).copy()
    draw = ImageDraw.Draw(canvas)
    side = max(canvas.size)
    line_width = max(1, round(side / 300))
    font = ImageFont.load_default(size=max(10, round(side / 40)))

    for index, (x0, y0, x1, y1) in enumerate(boxes_xyxy):
        s = prepared.scale
        # Half-open box edges become inclusive pixel corners for PIL.
        left, top = x0 * s, y0 * s
        right, bottom = max(left, x1 * s - 1), max(top, y1 * s - 1)
        draw.rectangle((left, top, right, bottom), outline=colour, width=line_width)
        if labels is not None:
            text = labels[index]
            text_box = draw.textbbox((left, top), text, font=font)
            pad = line_width
            draw.rectangle(
                (text_box[0] - pad, text_box[1] - pad, text_box[2] + pad, text_box[3] + pad),
                fill=colour,
            )
            draw.text((left, top), text, fill="black", font=font)
    return canvas

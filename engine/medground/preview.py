"""PNG contact sheets: accepted records and a sample of rejections, with boxes and text."""

from __future__ import annotations

import json
import logging
import random
import textwrap
from pathlib import Path
from typing import Any

import polars as pl
from PIL import Image, ImageDraw, ImageFont

from medground.store import atomic_path

logger = logging.getLogger(__name__)

TILE_PX = 320
COLUMNS = 4
TEXT_LINES = 6
_COLORS = ("#00e676", "#ffea00", "#00b0ff", "#ff4081", "#ff9100", "#d500f9")
_REJECT_COLOR = "#ff1744"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType ignores sizes
        return ImageFont.load_default()


def _tile(
    image_path: str, boxes: list[tuple[list[float], str]], caption: str, accent: str | None = None
) -> Image.Image:
    font = _font(13)
    line_height = 16
    tile = Image.new("RGB", (TILE_PX, TILE_PX + TEXT_LINES * line_height + 8), "#202124")
    try:
        with Image.open(image_path) as source:
            picture = source.convert("RGB")
    except OSError as exc:
        picture = Image.new("RGB", (TILE_PX, TILE_PX), "#444444")
        caption = f"[image not readable: {exc}] {caption}"
    scale = min(TILE_PX / picture.width, TILE_PX / picture.height)
    shown = picture.resize(
        (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    )
    offset = ((TILE_PX - shown.width) // 2, (TILE_PX - shown.height) // 2)
    tile.paste(shown, offset)
    draw = ImageDraw.Draw(tile)
    for index, (box, color) in enumerate(boxes):
        x0, y0, x1, y1 = (v * scale for v in box)
        draw.rectangle(
            [x0 + offset[0], y0 + offset[1], x1 + offset[0] - 1, y1 + offset[1] - 1],
            outline=color,
            width=2,
        )
        draw.text((x0 + offset[0] + 3, y0 + offset[1] + 2), str(index + 1), fill=color, font=font)
    if accent:
        draw.rectangle([0, 0, tile.width - 1, tile.height - 1], outline=accent, width=3)
    wrapped = textwrap.wrap(caption, width=44)[:TEXT_LINES]
    for line_number, line in enumerate(wrapped):
        draw.text((6, TILE_PX + 4 + line_number * line_height), line, fill="#e8eaed", font=font)
    return tile


def _sheet(tiles: list[Image.Image], path: Path) -> None:
    rows = (len(tiles) + COLUMNS - 1) // COLUMNS
    height = tiles[0].height
    sheet = Image.new("RGB", (COLUMNS * TILE_PX, rows * height), "#000000")
    for index, tile in enumerate(tiles):
        sheet.paste(tile, ((index % COLUMNS) * TILE_PX, (index // COLUMNS) * height))
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")


def _sample_records(run_dir: Path, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Draw ``n`` records of ``records.jsonl`` in two passes, holding only the drawn ones.

    The draw equals ``rng.sample(all_records, n)``, because :func:`random.sample` picks
    positions from the population's length alone.
    """
    path = run_dir / "records.jsonl"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        count = sum(1 for line in handle if line.strip())
    positions = rng.sample(range(count), min(n, count))
    wanted = set(positions)
    found: dict[int, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as handle:
        lines = (line for line in handle if line.strip())
        for position, line in enumerate(lines):
            if position in wanted:
                found[position] = json.loads(line)
    return [found[p] for p in positions]


def _sample_rejections(path: Path, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Draw ``n`` rejections that have a query, reading only the drawn rows into memory."""
    with_query = pl.scan_parquet(path).filter(pl.col("query").is_not_null())
    count = with_query.select(pl.len()).collect().item()
    positions = rng.sample(range(count), min(n, count))
    picked = (
        with_query.with_row_index("position").filter(pl.col("position").is_in(positions)).collect()
    )
    by_position = {row["position"]: row for row in picked.iter_rows(named=True)}
    return [by_position[p] for p in positions]


def write_previews(run_dir: Path, n: int = 24, seed: int = 0) -> list[Path]:
    """Write contact sheets of ``n`` accepted records and ``n`` rejections with a query.

    Sheets go to ``<run_dir>/preview/`` as ``accepted-<k>.png`` and ``rejected-<k>.png``
    with 16 tiles each. Returns the paths written.
    """
    out = run_dir / "preview"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    rng = random.Random(seed)
    written: list[Path] = []

    chosen = _sample_records(run_dir, n, rng)
    tiles = []
    for record in chosen:
        boxes = [
            (t["bbox_xyxy"], _COLORS[i % len(_COLORS)]) for i, t in enumerate(record["targets"])
        ]
        caption = f"{record['query']}  [{record['task']}; {record['id']}]"
        tiles.append(_tile(record["image"]["path"], boxes, caption))
    written += _write_sheets(tiles, out, "accepted")

    rejected_path = run_dir / "rejected.parquet"
    if rejected_path.is_file():
        picked = _sample_rejections(rejected_path, n, rng)
        tiles = []
        for row in picked:
            targets = json.loads(row["targets_json"] or "[]")
            boxes = [(t["bbox_xyxy"], _REJECT_COLOR) for t in targets]
            caption = f"{row['query']}  REJECTED {row['rule_id']}: {row['message']}"
            tiles.append(_tile(row["image_path"], boxes, caption, accent=_REJECT_COLOR))
        written += _write_sheets(tiles, out, "rejected")
    logger.debug("wrote %d preview sheets to %s", len(written), out)
    return written


def _write_sheets(tiles: list[Image.Image], out: Path, prefix: str) -> list[Path]:
    paths = []
    for start in range(0, len(tiles), 16):
        path = out / f"{prefix}-{start // 16 + 1}.png"
        _sheet(tiles[start : start + 16], path)
        paths.append(path)
    return paths

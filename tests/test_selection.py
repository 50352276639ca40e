"""Target selection of crowded images: sharing one cue pass changes no target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medground.config.loader import load_cues, load_manifest
from medground.extract import ImageResult, TargetSelection, process_image, process_items
from medground.io.pairing import discover
from support import TINY_MANIFEST, write_image

REPO = Path(__file__).resolve().parents[1]


def _crowded_dataset(folder: Path, cases: int = 4) -> Path:
    """Write images whose label maps contain 6 to 11 squares of varied size."""
    rng = np.random.default_rng(11)
    for index in range(cases):
        labels = np.zeros((120, 160), np.uint8)
        for _ in range(int(rng.integers(6, 12))):
            side = int(rng.integers(4, 14))
            y, x = int(rng.integers(0, 120 - side)), int(rng.integers(0, 160 - side))
            labels[y : y + side, x : x + side] = 1
        write_image(folder / "labels" / f"case{index}.png", labels)
        picture = rng.integers(0, 255, (120, 160), dtype=np.uint8)
        write_image(folder / "images" / f"case{index}.png", picture)
    manifest = folder / "crowded.yaml"
    text = TINY_MANIFEST.format(root=".").replace("name: tiny", "name: crowded")
    manifest.write_text(text + "targets:\n  max_single_per_image: 2\n", encoding="utf-8")
    return manifest


def _outcome(results: list[ImageResult]) -> list[tuple[Any, ...]]:
    return [
        (
            res.image_key,
            [(t["task"], t["object_ids"], t.get("relation")) for t in res.targets],
            [(o["object_id"], o.get("singleable"), o["solidity"]) for o in res.objects],
        )
        for res in results
    ]


@pytest.fixture
def crowded(tmp_path: Path) -> tuple[Any, Path, Any, list[Any]]:
    loaded = load_manifest(_crowded_dataset(tmp_path))
    cues = load_cues(REPO / "rules" / "cues.yaml")
    items = discover(loaded.manifest, loaded.root).items
    return loaded.manifest, loaded.root, cues, items


def test_crowded_images_wait_for_flush(crowded: tuple[Any, ...]) -> None:
    manifest, root, cues, items = crowded
    selection = TargetSelection(manifest, cues)
    results = [process_image(item, manifest, root, selection) for item in items]
    assert all(len(res.objects) > 2 for res in results)
    assert all(res.targets == [] for res in results)  # waiting, not yet selected
    selection.flush()
    assert all(res.targets for res in results)
    assert all("singleable" in obj for res in results for obj in res.objects)


def test_sharing_the_cue_pass_changes_no_target(
    crowded: tuple[Any, ...], tmp_path: Path
) -> None:
    manifest, root, cues, items = crowded
    together = [r for rs in process_items(items, manifest, root, cues, tmp_path) for r in rs]
    alone = [process_items([item], manifest, root, cues, tmp_path)[0][0] for item in items]
    # A pixel budget of 1 finishes every image as soon as it arrives.
    eager = TargetSelection(manifest, cues, max_waiting_px=1)
    one_by_one = [process_image(item, manifest, root, eager) for item in items]
    assert all(res.targets for res in one_by_one)
    assert _outcome(together) == _outcome(alone) == _outcome(one_by_one)
    singles = [t for res in together for t in res.targets if t["task"] == "single"]
    assert singles and all(len(t["object_ids"]) == 1 for t in singles)

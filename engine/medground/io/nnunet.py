"""Read nnU-Net v2 and Medical Segmentation Decathlon (MSD) dataset folders.

Both layouts keep a ``dataset.json`` beside ``imagesTr/`` and ``labelsTr/``:

- nnU-Net v2: ``labels`` maps class name to id (``{"background": 0, "liver": 1}``),
  ``file_ending`` gives the suffix, and each channel is its own file
  ``imagesTr/<case>_<XXXX><file_ending>`` paired with ``labelsTr/<case><file_ending>``. An
  optional ``dataset`` entry lists the files of each case explicitly.
- MSD (and nnU-Net v1): ``labels`` maps id strings to names (``{"0": "background"}``),
  ``training`` lists ``{"image", "label"}`` paths, and multi-channel images are 4D files
  whose last axis is the channel.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from medground.io.slicing import VolumeCase, VolumeDiscovery

logger = logging.getLogger(__name__)


def _load_dataset_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(
            f"{path} not found; format 'nnunet' reads class names and the file layout from "
            "the dataset.json beside imagesTr/ and labelsTr/"
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(content, dict) or not isinstance(content.get("labels"), dict):
        raise ValueError(f"{path}: expected a JSON object with a 'labels' object")
    return content


def _is_msd_labels(labels: dict[str, Any]) -> bool:
    return all(key.strip().isdigit() for key in labels)


def read_nnunet_labels(dataset_json: Path) -> dict[int, str]:
    """Read label id to class name from a ``dataset.json``, leaving out background (id 0).

    Args:
        dataset_json: nnU-Net v2 or MSD ``dataset.json``.

    Returns:
        Positive label ids to class names.

    Raises:
        ValueError: For region-based nnU-Net labels (a name mapped to several ids), which
            name unions of ids rather than ids; declare ``volume.labels`` for them.
    """
    labels = _load_dataset_json(dataset_json)["labels"]
    if _is_msd_labels(labels):
        pairs = [(int(key), str(name)) for key, name in labels.items()]
    else:
        pairs = []
        for name, value in labels.items():
            if isinstance(value, list | tuple):
                raise ValueError(
                    f"{dataset_json}: label '{name}' is a region of ids {list(value)} "
                    "(region-based training); declare volume.labels with one name per id"
                )
            if not isinstance(value, int):
                raise ValueError(
                    f"{dataset_json}: label '{name}' has id {value!r}; expected an integer"
                )
            pairs.append((value, str(name)))

    class_names: dict[int, str] = {}
    for label_id, name in pairs:
        if label_id in class_names:
            raise ValueError(
                f"{dataset_json}: id {label_id} is named both '{class_names[label_id]}' and "
                f"'{name}'"
            )
        class_names[label_id] = name
    class_names.pop(0, None)
    return dict(sorted(class_names.items()))


def discover_nnunet_cases(root: Path, channel: int = 0) -> VolumeDiscovery:
    """Pair training images with label maps as ``dataset.json`` describes.

    Args:
        root: Folder holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        channel: nnU-Net v2 channel whose files are the images (``_0000`` for 0). MSD
            images hold all channels in one file; the reader picks ``channel`` later.

    Returns:
        Cases sorted by case id, and the files that have no partner.
    """
    content = _load_dataset_json(root / "dataset.json")
    if "file_ending" in content or "channel_names" in content:
        return _discover_v2(root, content, channel)
    if "training" in content:
        return _discover_msd(root, content)
    raise ValueError(
        f"{root / 'dataset.json'}: neither nnU-Net v2 ('file_ending', 'channel_names') nor "
        "MSD ('training') keys found; check the file"
    )


def _discover_v2(root: Path, content: dict[str, Any], channel: int) -> VolumeDiscovery:
    file_ending = content.get("file_ending")
    if not isinstance(file_ending, str):
        raise ValueError(f"{root / 'dataset.json'}: missing 'file_ending', e.g. \".nii.gz\"")

    if isinstance(content.get("dataset"), dict):
        return _discover_listed(root, content["dataset"], channel)

    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise ValueError(
                f"{folder} not found; an nnU-Net v2 dataset keeps its training "
                "cases in imagesTr/ and labelsTr/"
            )

    channel_suffix = f"_{channel:04d}{file_ending}"
    cases: list[VolumeCase] = []
    unpaired: list[Path] = []
    paired_images: set[Path] = set()
    for label_path in sorted(labels_dir.glob(f"*{file_ending}")):
        case_id = label_path.name[: -len(file_ending)]
        image_path = images_dir / f"{case_id}{channel_suffix}"
        if image_path.is_file():
            cases.append(VolumeCase(case_id=case_id, image_path=image_path, label_path=label_path))
            paired_images.add(image_path)
        else:
            unpaired.append(label_path)
    unpaired += [
        path for path in sorted(images_dir.glob(f"*{channel_suffix}")) if path not in paired_images
    ]
    return _finish(root, cases, unpaired)


def _discover_listed(root: Path, listing: dict[str, Any], channel: int) -> VolumeDiscovery:
    cases: list[VolumeCase] = []
    unpaired: list[Path] = []
    for case_id, entry in sorted(listing.items()):
        images = entry.get("images") or []
        label = entry.get("label")
        if channel >= len(images) or label is None:
            raise ValueError(
                f"{root / 'dataset.json'}: case '{case_id}' lists {len(images)} images and "
                f"label {label!r}; channel {channel} and a label are needed"
            )
        image_path, label_path = root / images[channel], root / label
        if image_path.is_file() and label_path.is_file():
            cases.append(VolumeCase(case_id=case_id, image_path=image_path, label_path=label_path))
        else:
            unpaired += [path for path in (image_path, label_path) if path.is_file()]
    return _finish(root, cases, unpaired)


def _discover_msd(root: Path, content: dict[str, Any]) -> VolumeDiscovery:
    cases: list[VolumeCase] = []
    unpaired: list[Path] = []
    for entry in content["training"]:
        if not isinstance(entry, dict) or not {"image", "label"} <= entry.keys():
            raise ValueError(
                f"{root / 'dataset.json'}: training entry {entry!r} needs 'image' and 'label'"
            )
        image_path = root / entry["image"]
        label_path = root / entry["label"]
        case_id = image_path.name.removesuffix(".gz").removesuffix(".nii")
        if image_path.is_file() and label_path.is_file():
            cases.append(VolumeCase(case_id=case_id, image_path=image_path, label_path=label_path))
        else:
            unpaired += [path for path in (image_path, label_path) if path.is_file()]
            missing = [str(path) for path in (image_path, label_path) if not path.is_file()]
            logger.warning("%s: case %s lists missing files %s", root, case_id, missing)
    return _finish(root, cases, unpaired)


def _finish(root: Path, cases: list[VolumeCase], unpaired: list[Path]) -> VolumeDiscovery:
    if unpaired:
        logger.warning("%s: %d files have no image or label partner", root, len(unpaired))
    logger.debug("%s: found %d cases", root, len(cases))
    return VolumeDiscovery(
        cases=tuple(sorted(cases, key=lambda case: case.case_id)), unpaired=tuple(unpaired)
    )

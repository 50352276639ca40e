"""Export writers, one per training format.

Every writer reads canonical records (pixel ``bbox_xyxy`` of the original image) and
converts boxes with the function named for the target convention in :mod:`medground.boxes`.
It writes its files plus a README.md that states the coordinate space, the image size and
the source runs. Images are copied or hard-linked under ``images/``; the ``hf`` format embeds
them in the parquet files instead.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medground import boxes as box_ops
from medground.export.common import (
    ExportError,
    ExportOptions,
    ExportResult,
    ImageStore,
    check_image_size,
    group_by_split,
    image_size,
    image_size_markdown,
    target_boxes,
    target_labels,
    write_readme,
)
from medground.export.markup import get_markup
from medground.export.runs import (
    write_bytes_atomic,
    write_json_atomic,
    write_jsonl_atomic,
)

logger = logging.getLogger(__name__)

Writer = Callable[[list[dict[str, Any]], ExportOptions], ExportResult]

NORM1000_TEXT = (
    "Boxes are `[x1, y1, x2, y2]` on the integer 0..1000 grid of the **original** image: "
    "`x = round(x_pixel / width * 1000)`, `y = round(y_pixel / height * 1000)`, clipped to "
    "0..1000. The grid does not depend on how the model resizes the image. Pixel boxes are "
    "half-open, so a box reaching the right edge has x2 = 1000."
)


@dataclass(frozen=True)
class ExportFormat:
    """A registered export format."""

    name: str
    summary: str
    write: Writer


def _counts(groups: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    return {name: len(group) for name, group in groups.items()}


def _image_token_request(markup_name: str, query: str) -> str:
    return "<image>\n" + get_markup(markup_name).render_request(query)


def _markup_response(
    markup_name: str, record: dict[str, Any], resize_size: tuple[int, int] | None
) -> str:
    markup = get_markup(markup_name)
    width, height = image_size(record)
    coords = box_ops.xyxy_to_space(target_boxes(record), markup.space, width, height, resize_size)
    return markup.render_response(coords, target_labels(record), record["query"])


# --- medground ----------------------------------------------------------------------------


def _write_medground(records: list[dict[str, Any]], options: ExportOptions) -> ExportResult:
    store = ImageStore(options.out_dir, options.link)
    files: list[Path] = []
    by_file: dict[Path, list[dict[str, Any]]] = {}
    for split, group in group_by_split(records).items():
        for record in group:
            path = options.out_dir / f"{record['dataset']}_{split}.json"
            root = Path(record["source"]["root"])
            masks = [str(root / mask) for mask in record["source"]["masks"]]
            width, height = image_size(record)
            by_file.setdefault(path, []).append(
                {
                    "id": record["id"],
                    "image_path": store.add(record),
                    "mask_path": masks[0] if masks else None,
                    "mask_paths": masks,
                    "gt_bboxes": target_boxes(record).tolist(),
                    "task": record["task"],
                    "source": record["source"]["image"],
                    "dataset_name": record["dataset"],
                    "original_findings": record.get("cues") or {},
                    "question": record["query"],
                    "classes": target_labels(record),
                    "modality": record["modality"],
                    "width": width,
                    "height": height,
                    "split": record["split"],
                }
            )
    for path, rows in by_file.items():
        write_json_atomic(path, rows)
        files.append(path)

    coordinate_space = (
        "`gt_bboxes` are `[x0, y0, x1, y1]` in pixels of the original image, continuous and "
        "half-open (a single pixel at column 3, row 5 is `[3, 5, 4, 6]`). This is the "
        "engine's canonical box; nothing is rescaled."
    )
    usage = (
        "One JSON array per dataset and split, named `<dataset>_<split>.json`, with the "
        "fields of the public MedGround release (`image_path`, `mask_path`, `mask_paths`, "
        "`gt_bboxes`, `task`, `source`, `dataset_name`, `original_findings`) plus `id`, "
        "`question` (the referring query), `classes`, `modality`, `width`, `height` and "
        "`split`. `image_path` is relative to this folder; `mask_path(s)` are absolute paths "
        "of the source masks, which are not copied. `original_findings` holds the cues the "
        "query was written from.\n\n"
        "NOTE: the release's field names were read from its published file listing; the "
        "meaning given to `source` (source image path relative to the dataset root) and "
        "`original_findings` (cues) is this engine's choice."
    )
    files.append(
        write_readme(
            options,
            records,
            "MedGround release layout",
            coordinate_space,
            image_size_markdown(records),
            files,
            usage,
        )
    )
    return ExportResult("medground", options.out_dir, files, _counts(group_by_split(records)))


# --- Qwen2-VL, Qwen3-VL, Qwen2.5-VL, InternVL conversation files -------------------------


def _conversation_rows(
    records: list[dict[str, Any]], options: ExportOptions, markup_name: str, store: ImageStore
) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        width, height = image_size(record)
        resized = (
            options.resize.resized_size(width, height) if markup_name == "qwen2.5-vl" else None
        )
        row: dict[str, Any] = {
            "id": record["id"],
            "image": store.add(record),
            "width": width,
            "height": height,
        }
        if resized is not None:
            row["resized_width"], row["resized_height"] = resized
        row["conversations"] = [
            {"from": "human", "value": _image_token_request(markup_name, record["query"])},
            {"from": "gpt", "value": _markup_response(markup_name, record, resized)},
        ]
        rows.append(row)
    return rows


def _conversation_writer(markup_name: str) -> Writer:
    def write(records: list[dict[str, Any]], options: ExportOptions) -> ExportResult:
        store = ImageStore(options.out_dir, options.link)
        groups = group_by_split(records)
        files: list[Path] = []
        meta: dict[str, Any] = {}
        for split, group in groups.items():
            path = options.out_dir / f"{split}.jsonl"
            rows = _conversation_rows(group, options, markup_name, store)
            write_jsonl_atomic(path, rows)
            files.append(path)
            meta[f"medground_{split}"] = {
                "root": str(options.out_dir.resolve()),
                "annotation": str(path.resolve()),
                "data_augment": False,
                "max_dynamic_patch": 12,
                "repeat_time": 1,
                "length": len(rows),
            }
        if markup_name == "internvl":
            meta_path = options.out_dir / "internvl_meta.json"
            write_json_atomic(meta_path, meta)
            files.append(meta_path)

        coordinate_space, image_sizes = _markup_space_text(markup_name, records, options)
        usage = (
            "One JSON Lines file per split. Each row has `id`, `image` (relative to this "
            "folder), `width`, `height` and `conversations` with a `human` request "
            "(`<image>` then the query in the model's reference markup) and a `gpt` answer "
            f"in {markup_name}'s box markup."
        )
        if markup_name == "internvl":
            usage += (
                " `internvl_meta.json` is an InternVL meta file (root, annotation, "
                "repeat_time, length) for `--meta_path`."
            )
        files.append(
            write_readme(
                options,
                records,
                f"{markup_name} grounding export",
                coordinate_space,
                image_sizes,
                files,
                usage,
            )
        )
        return ExportResult(markup_name, options.out_dir, files, _counts(groups))

    return write


def _markup_space_text(
    markup_name: str, records: list[dict[str, Any]], options: ExportOptions
) -> tuple[str, str]:
    sizes = image_size_markdown(records)
    if markup_name == "qwen2.5-vl":
        resized = sorted({options.resize.resized_size(*image_size(record)) for record in records})
        space = (
            "Boxes are `[x1, y1, x2, y2]` in integer **absolute pixels of the resized "
            "image** that Qwen2.5-VL's processor produces with "
            f"`{options.resize.describe()}`. Train and run inference with exactly these "
            "processor settings, or every box is in the wrong place. Each row carries "
            "`resized_width` / `resized_height`; the conversion is "
            "`x_resized = round(x_pixel * resized_width / width)`."
        )
        listed = ", ".join(f"{w}x{h}" for w, h in resized[:10])
        more = f" and {len(resized) - 10} more" if len(resized) > 10 else ""
        sizes += f" Resized sizes (width x height): {listed}{more}."
        return space, sizes
    if markup_name == "florence-2":
        space = (
            "Boxes are Florence-2 location tokens `<loc_0>`..`<loc_999>`: "
            "`bin = floor(x_pixel / (width / 1000))`, clamped to 999, on the **original** "
            "image. Florence-2 decodes a bin to its centre, `(bin + 0.5) * width / 1000`."
        )
        return space, sizes
    return NORM1000_TEXT, sizes


# --- Florence-2 -----------------------------------------------------------------------------


def _write_florence(records: list[dict[str, Any]], options: ExportOptions) -> ExportResult:
    store = ImageStore(options.out_dir, options.link)
    groups = group_by_split(records)
    files: list[Path] = []
    for split, group in groups.items():
        rows = []
        for record in group:
            width, height = image_size(record)
            rows.append(
                {
                    "id": record["id"],
                    "image": store.add(record),
                    "width": width,
                    "height": height,
                    "prefix": get_markup("florence-2").render_request(record["query"]),
                    "suffix": _markup_response("florence-2", record, None),
                }
            )
        path = options.out_dir / f"{split}.jsonl"
        write_jsonl_atomic(path, rows)
        files.append(path)

    coordinate_space, image_sizes = _markup_space_text("florence-2", records, options)
    usage = (
        "One JSON Lines file per split with `id`, `image`, `width`, `height`, `prefix` (the "
        "task token `<OPEN_VOCABULARY_DETECTION>` followed by the query; the Florence-2 "
        "processor expands it to `Locate <query> in the image.`) and `suffix` (the target "
        "class followed by one `<loc_x1><loc_y1><loc_x2><loc_y2>` group per box). Feed "
        "`prefix` as the text input and `suffix` as the labels."
    )
    files.append(
        write_readme(
            options,
            records,
            "Florence-2 grounding export",
            coordinate_space,
            image_sizes,
            files,
            usage,
        )
    )
    return ExportResult("florence-2", options.out_dir, files, _counts(groups))


# --- ms-swift -------------------------------------------------------------------------------


def _write_ms_swift(records: list[dict[str, Any]], options: ExportOptions) -> ExportResult:
    store = ImageStore(options.out_dir, options.link)
    groups = group_by_split(records)
    files: list[Path] = []
    for split, group in groups.items():
        rows = []
        for record in group:
            image = (options.out_dir / store.add(record)).resolve()
            boxes = target_boxes(record)
            rows.append(
                {
                    "id": record["id"],
                    "messages": [
                        {
                            "role": "user",
                            "content": "<image>Locate <ref-object> in the image.",
                        },
                        {"role": "assistant", "content": "<bbox>" * len(boxes)},
                    ],
                    "images": [str(image)],
                    "objects": {
                        "ref": [record["query"]],
                        "bbox": boxes.tolist(),
                        "bbox_type": "real",
                    },
                }
            )
        path = options.out_dir / f"{split}.jsonl"
        write_jsonl_atomic(path, rows)
        files.append(path)

    coordinate_space = (
        "`objects.bbox` holds `[x1, y1, x2, y2]` in pixels of the **original** image with "
        "`bbox_type: real`. ms-swift converts them to the chosen model's own convention "
        "while training (0..1000 for Qwen2-VL and InternVL, resized pixels for Qwen2.5-VL), "
        "so one export serves every model ms-swift supports."
    )
    usage = (
        "One JSON Lines file per split in ms-swift's grounding format: `messages` with a "
        "`<ref-object>` placeholder in the request and one `<bbox>` placeholder per target "
        "box in the answer, `images` (absolute paths of the copies in this folder) and "
        "`objects` (`ref`, `bbox`, `bbox_type`). Pass a file with `--dataset` and the "
        "validation file with `--val_dataset`."
    )
    files.append(
        write_readme(
            options,
            records,
            "ms-swift grounding export",
            coordinate_space,
            image_size_markdown(records),
            files,
            usage,
        )
    )
    return ExportResult("ms-swift", options.out_dir, files, _counts(groups))


# --- LLaMA-Factory --------------------------------------------------------------------------

LLAMA_FACTORY_MARKUPS = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "internvl")


def _write_llama_factory(records: list[dict[str, Any]], options: ExportOptions) -> ExportResult:
    markup_name = options.markup
    if markup_name not in LLAMA_FACTORY_MARKUPS:
        raise ExportError(
            f"--markup {markup_name!r} is not valid for llama-factory; LLaMA-Factory trains "
            "on the model's own box text, so choose the model family: "
            f"{', '.join(LLAMA_FACTORY_MARKUPS)}"
        )
    store = ImageStore(options.out_dir, options.link)
    groups = group_by_split(records)
    files: list[Path] = []
    dataset_info: dict[str, Any] = {}
    for split, group in groups.items():
        rows = []
        for record in group:
            width, height = image_size(record)
            resized = (
                options.resize.resized_size(width, height) if markup_name == "qwen2.5-vl" else None
            )
            rows.append(
                {
                    "id": record["id"],
                    "messages": [
                        {
                            "role": "user",
                            "content": _image_token_request(markup_name, record["query"]),
                        },
                        {
                            "role": "assistant",
                            "content": _markup_response(markup_name, record, resized),
                        },
                    ],
                    "images": [store.add(record)],
                }
            )
        path = options.out_dir / f"{split}.json"
        write_json_atomic(path, rows)
        files.append(path)
        dataset_info[f"medground_{split}"] = {
            "file_name": path.name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        }
    info_path = options.out_dir / "dataset_info.json"
    write_json_atomic(info_path, dataset_info)
    files.append(info_path)

    coordinate_space, image_sizes = _markup_space_text(markup_name, records, options)
    if markup_name == "qwen2.5-vl":
        max_area = max(width * height for width, height in map(image_size, records))
        coordinate_space += (
            "\n\nLLaMA-Factory shrinks images to `image_max_pixels` (and enlarges them to "
            "`image_min_pixels`) **before** the Qwen processor runs. These boxes assume it "
            f"does not: set `image_max_pixels: {max(max_area, 1)}` or more and "
            "`image_min_pixels` no larger than the smallest image."
        )
    usage = (
        "ShareGPT-style JSON (`messages` + `images`, image paths relative to this folder) "
        "with the answer in "
        f"{markup_name}'s box markup. `dataset_info.json` registers one dataset per split; "
        "set `dataset_dir` to this folder and `dataset: medground_train`."
    )
    files.append(
        write_readme(
            options,
            records,
            f"LLaMA-Factory grounding export ({markup_name} markup)",
            coordinate_space,
            image_sizes,
            files,
            usage,
        )
    )
    return ExportResult("llama-factory", options.out_dir, files, _counts(groups))


# --- RefCOCO ------------------------------------------------------------------------------

REFCOCO_SPLIT_BY = "medground"


def _write_refcoco(records: list[dict[str, Any]], options: ExportOptions) -> ExportResult:
    store = ImageStore(options.out_dir, options.link)
    classes = sorted({label for record in records for label in target_labels(record)})
    category_ids = {name: index for index, name in enumerate(classes, start=1)}
    images: dict[str, dict[str, Any]] = {}
    annotations: dict[tuple[Any, ...], dict[str, Any]] = {}
    grefs: list[dict[str, Any]] = []

    for ref_id, record in enumerate(records, start=1):
        relative = store.add(record)
        file_name = relative.removeprefix("images/")
        if relative not in images:
            width, height = image_size(record)
            images[relative] = {
                "id": len(images) + 1,
                "file_name": file_name,
                "width": width,
                "height": height,
            }
        image_id = images[relative]["id"]

        ann_ids = []
        for target in record["targets"]:
            key = (image_id, tuple(target["object_ids"]), tuple(target["bbox_xyxy"]))
            if key not in annotations:
                xywh = box_ops.xyxy_to_coco_xywh(target["bbox_xyxy"])[0]
                annotations[key] = {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[target["class"]],
                    "bbox": xywh.tolist(),
                    "area": float(xywh[2] * xywh[3]),
                    "iscrowd": 0,
                    "segmentation": [],
                    "object_ids": list(target["object_ids"]),
                }
            ann_ids.append(annotations[key]["id"])

        grefs.append(
            {
                "ref_id": ref_id,
                "ann_id": ann_ids,
                "image_id": image_id,
                "split": record["split"] or "unsplit",
                "category_id": category_ids[record["targets"][0]["class"]],
                "file_name": file_name,
                "sent_ids": [ref_id],
                "sentences": [
                    {
                        "sent_id": ref_id,
                        "sent": record["query"],
                        "raw": record["query"],
                        "tokens": record["query"].split(),
                    }
                ],
                "record_id": record["id"],
            }
        )

    instances = {
        "images": list(images.values()),
        "annotations": list(annotations.values()),
        "categories": [
            {"id": index, "name": name, "supercategory": name}
            for name, index in category_ids.items()
        ],
    }
    single_refs = [{**ref, "ann_id": ref["ann_id"][0]} for ref in grefs if len(ref["ann_id"]) == 1]
    instances_path = options.out_dir / "instances.json"
    grefs_path = options.out_dir / f"grefs({REFCOCO_SPLIT_BY}).json"
    refs_path = options.out_dir / f"refs({REFCOCO_SPLIT_BY}).p"
    write_json_atomic(instances_path, instances)
    write_json_atomic(grefs_path, grefs)
    write_bytes_atomic(refs_path, pickle.dumps(single_refs, protocol=4))
    files = [instances_path, grefs_path, refs_path]
    if len(single_refs) < len(grefs):
        logger.info(
            "refcoco: %d multi-box records are in %s only; refs(%s).p contains the %d "
            "single-box records the REFER API can read",
            len(grefs) - len(single_refs),
            grefs_path.name,
            REFCOCO_SPLIT_BY,
            len(single_refs),
        )

    coordinate_space = (
        "`instances.json` annotations use COCO `bbox: [x, y, width, height]` in pixels of the "
        "original image (`x = x0`, `width = x1 - x0` of the half-open pixel box)."
    )
    usage = (
        "RefCOCO layout: `instances.json` (COCO images, annotations, categories), "
        f"`refs({REFCOCO_SPLIT_BY}).p` (pickled list of refs with one `ann_id` each, readable "
        f"by the REFER API with `splitBy='{REFCOCO_SPLIT_BY}'`; multi-box records are left "
        f"out) and `grefs({REFCOCO_SPLIT_BY}).json` (every record, `ann_id` a list as in "
        "gRefCOCO). Image `file_name`s are relative to `images/`. Each ref carries "
        "`record_id`, the MedGround record id. Annotations have no segmentation."
    )
    files.append(
        write_readme(
            options,
            records,
            "RefCOCO-style export",
            coordinate_space,
            image_size_markdown(records),
            files,
            usage,
        )
    )
    return ExportResult("refcoco", options.out_dir, files, _counts(group_by_split(records)))


# --- Hugging Face parquet -----------------------------------------------------------------

_HF_FEATURES = {
    "id": {"dtype": "string", "_type": "Value"},
    "image": {"_type": "Image"},
    "query": {"dtype": "string", "_type": "Value"},
    "task": {"dtype": "string", "_type": "Value"},
    "dataset": {"dtype": "string", "_type": "Value"},
    "modality": {"dtype": "string", "_type": "Value"},
    "classes": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
    "bbox_xyxy": {
        "feature": {"feature": {"dtype": "float64", "_type": "Value"}, "_type": "Sequence"},
        "_type": "Sequence",
    },
    "width": {"dtype": "int64", "_type": "Value"},
    "height": {"dtype": "int64", "_type": "Value"},
}
_HF_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("query", pa.string()),
        ("task", pa.string()),
        ("dataset", pa.string()),
        ("modality", pa.string()),
        ("classes", pa.list_(pa.string())),
        ("bbox_xyxy", pa.list_(pa.list_(pa.float64()))),
        ("width", pa.int64()),
        ("height", pa.int64()),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": _HF_FEATURES}})},
)


def _write_hf(records: list[dict[str, Any]], options: ExportOptions) -> ExportResult:
    groups = group_by_split(records)
    files: list[Path] = []
    for split, group in groups.items():
        columns: dict[str, list[Any]] = {name: [] for name in _HF_SCHEMA.names}
        for record in group:
            source = Path(record["image"]["path"])
            if not source.is_file():
                raise ExportError(f"image {source} of record {record['id']!r} not found")
            check_image_size(source, record)
            width, height = image_size(record)
            columns["id"].append(record["id"])
            columns["image"].append({"bytes": source.read_bytes(), "path": source.name})
            columns["query"].append(record["query"])
            columns["task"].append(record["task"])
            columns["dataset"].append(record["dataset"])
            columns["modality"].append(record["modality"])
            columns["classes"].append(target_labels(record))
            columns["bbox_xyxy"].append(target_boxes(record).tolist())
            columns["width"].append(width)
            columns["height"].append(height)
        table = pa.table(columns, schema=_HF_SCHEMA)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        path = options.out_dir / "data" / f"{split}-00000-of-00001.parquet"
        write_bytes_atomic(path, buffer.getvalue())
        files.append(path)

    data_files = "".join(f"  - split: {split}\n    path: data/{split}-*\n" for split in groups)
    front_matter = f"---\nconfigs:\n- config_name: default\n  data_files:\n{data_files}---\n\n"
    coordinate_space = (
        "`bbox_xyxy` holds one `[x0, y0, x1, y1]` per target in pixels of the original "
        "image, continuous and half-open. The embedded `image` is the original file, "
        "byte for byte."
    )
    usage = (
        "A Hugging Face `datasets` folder: `datasets.load_dataset('<this folder>')` returns "
        "one split per parquet file with `image` decoded as a PIL image. Columns: `id`, "
        "`image`, `query`, `task`, `dataset`, `modality`, `classes`, `bbox_xyxy`, `width`, "
        "`height`."
    )
    files.append(
        write_readme(
            options,
            records,
            "MedGround grounding dataset (Hugging Face parquet)",
            coordinate_space,
            image_size_markdown(records),
            files,
            usage,
            front_matter,
        )
    )
    return ExportResult("hf", options.out_dir, files, _counts(groups))


# --- Registry -----------------------------------------------------------------------------

FORMATS: dict[str, ExportFormat] = {
    "medground": ExportFormat(
        "medground", "public MedGround release layout, pixel boxes", _write_medground
    ),
    "qwen2-vl": ExportFormat(
        "qwen2-vl", "Qwen2-VL box tokens on the 0..1000 grid", _conversation_writer("qwen2-vl")
    ),
    "qwen2.5-vl": ExportFormat(
        "qwen2.5-vl",
        "Qwen2.5-VL JSON, absolute pixels after the processor resize",
        _conversation_writer("qwen2.5-vl"),
    ),
    "qwen3-vl": ExportFormat(
        "qwen3-vl", "Qwen3-VL JSON bbox_2d on the 0..1000 grid", _conversation_writer("qwen3-vl")
    ),
    "internvl": ExportFormat(
        "internvl", "InternVL <ref>/<box> on the 0..1000 grid", _conversation_writer("internvl")
    ),
    "florence-2": ExportFormat(
        "florence-2", "Florence-2 prefix/suffix with <loc_*> tokens", _write_florence
    ),
    "ms-swift": ExportFormat(
        "ms-swift", "ms-swift messages/images/objects, pixel boxes", _write_ms_swift
    ),
    "llama-factory": ExportFormat(
        "llama-factory", "LLaMA-Factory sharegpt + dataset_info.json", _write_llama_factory
    ),
    "refcoco": ExportFormat(
        "refcoco", "COCO instances + RefCOCO refs, xywh pixels", _write_refcoco
    ),
    "hf": ExportFormat("hf", "Hugging Face datasets parquet folder", _write_hf),
}


def export_records(
    records: list[dict[str, Any]], format_name: str, options: ExportOptions
) -> ExportResult:
    """Write ``records`` in ``format_name`` into ``options.out_dir``.

    Raises:
        ExportError: on an unknown format, a missing image, an image whose size disagrees
            with its record, or an option the format cannot use.
    """
    try:
        export_format = FORMATS[format_name]
    except KeyError:
        raise ExportError(
            f"unknown export format {format_name!r}; valid formats: {', '.join(FORMATS)}"
        ) from None
    if options.markup is not None and format_name != "llama-factory":
        raise ExportError(
            f"--markup applies to llama-factory only; format {format_name!r} fixes its own "
            "box markup. Drop --markup"
        )
    options.out_dir.mkdir(parents=True, exist_ok=True)
    for record in records:
        for target in record["targets"]:
            box = np.asarray(target["bbox_xyxy"], dtype=np.float64)
            if not (box[2] > box[0] and box[3] > box[1]):
                raise ExportError(
                    f"record {record['id']!r} has an empty or inverted box {box.tolist()} "
                    f"for class {target['class']!r}; fix the run before exporting"
                )
    result = export_format.write(records, options)
    logger.info(
        "exported %d records as %s to %s (%s)",
        len(records),
        format_name,
        options.out_dir,
        result.counts,
    )
    return result

"""Render the static review page of an audit pack from its Jinja template.

The page embeds the items as a JSON data block (no fetch(), so it works from file://),
and keeps decisions in the browser's localStorage under ``mgr-audit:<pack id>:<reviewer>``.
The template is rendered in a sandboxed environment with autoescaping. The data block
goes through Jinja's ``tojson`` filter, which escapes ``<``, ``>``, ``&`` and ``'``, so a
query cannot close the script element.
"""

from __future__ import annotations

from typing import Any

from jinja2 import PackageLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from medground.audit.models import (
    DECISIONS_FORMAT,
    FORMAT_VERSION,
    VERDICT_LABELS,
    VERDICTS,
    PackManifest,
)
from medground.audit.render import TARGET_COLORS

TEMPLATE_NAME = "review.html.j2"


def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=PackageLoader("medground.audit", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def page_payload(manifest: PackManifest) -> dict[str, Any]:
    """Return what the page script needs: the items, the verdicts and the file format."""
    items = [
        {
            "item_id": item.item_id,
            "record_id": item.record_id,
            "kind": item.kind,
            "dataset": item.dataset,
            "task": item.task,
            "stage": item.stage,
            "rule_id": item.rule_id,
            "query": item.query,
            "image": {
                "boxed": item.image.boxed,
                "clean": item.image.clean,
                "width": item.image.width,
                "height": item.image.height,
            },
            "targets": [
                {"class": target.class_name, "bbox_xyxy": list(target.bbox_xyxy)}
                for target in item.targets
            ],
        }
        for item in manifest.items
    ]
    return {
        "pack_id": manifest.pack_id,
        "decisions_format": DECISIONS_FORMAT,
        "format_version": FORMAT_VERSION,
        "verdicts": [
            {"value": v, "label": VERDICT_LABELS[v], "key": str(i + 1)}
            for i, v in enumerate(VERDICTS)
        ],
        "colors": list(TARGET_COLORS),
        "items": items,
    }


def render_review_page(manifest: PackManifest) -> str:
    """Render ``index.html`` for a pack."""
    payload = page_payload(manifest)
    template = _environment().get_template(TEMPLATE_NAME)
    return template.render(
        pack_id=manifest.pack_id,
        n_items=len(manifest.items),
        verdicts=payload["verdicts"],
        payload=payload,
    )

"""Generate the JSON Schemas in ``schemas/`` from the pydantic models.

Run ``python -m medground.config.schemas`` after changing a model; a test fails while a
committed schema differs from the generated one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medground.config.cues import CueThresholds
from medground.config.lexicon import Lexicon
from medground.config.manifest import Manifest
from medground.config.phrasings import PhrasingFile
from medground.config.provider import ProviderConfig
from medground.config.rules import RuleFile

GENERATED: dict[str, type[BaseModel]] = {
    "manifest": Manifest,
    "rules": RuleFile,
    "cues": CueThresholds,
    "phrasings": PhrasingFile,
    "lexicon": Lexicon,
    "provider": ProviderConfig,
}


def generate_schema(name: str) -> dict[str, Any]:
    """Return the JSON Schema of the model registered under ``name``."""
    schema = GENERATED[name].model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def schema_text(name: str) -> str:
    """Return the schema as the text committed in ``schemas/``."""
    return json.dumps(generate_schema(name), indent=2, sort_keys=True) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    """Write every generated schema into ``folder``; return the paths written."""
    written = []
    for name in GENERATED:
        path = folder / f"{name}.schema.json"
        path.write_text(schema_text(name), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    from medground.resources import resource_dir

    for written_path in write_schemas(resource_dir("schemas")):
        print(written_path)

"""Jinja prompt templates for VLM stages, and validation of JSON replies.

A prompt template is a Jinja file with a ``user`` block (the request text) and an
optional ``system`` block. Templates render in a sandbox with ``StrictUndefined``, so a
template reading a variable the engine does not provide fails with the variable's name
instead of sending an empty phrase to a paid model. Templates are compiled when they
are loaded, so a syntax error stops a run before its first request.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from medground.resources import load_schema, resource_dir
from medground.vlm.client import InvalidReply

_FENCED_JSON = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n\s*```\s*$", re.DOTALL)


class PromptTemplateError(ValueError):
    """A prompt template that is missing, does not compile or does not render."""


@dataclass(frozen=True)
class RenderedPrompt:
    """The text parts of a rendered prompt."""

    system: str | None
    user: str


class PromptTemplate:
    """A compiled prompt template and the hash of its source.

    Attributes:
        name: Template file name, e.g. ``vlm_synthesis.j2``.
        path: File the template was loaded from.
        sha256: sha256 hex digest of the template source, recorded on every result.
    """

    def __init__(self, name: str, path: Path, template: jinja2.Template, source: str) -> None:
        self.name = name
        self.path = path
        self.sha256 = hashlib.sha256(source.encode("utf-8")).hexdigest()
        self._template = template
        if "user" not in template.blocks:
            raise PromptTemplateError(
                f"{path}: prompt template has no 'user' block; wrap the request text in "
                "{% block user %}...{% endblock %} (a 'system' block is optional)"
            )

    def render(self, context: dict[str, Any]) -> RenderedPrompt:
        """Render the ``system`` and ``user`` blocks with ``context``.

        Raises:
            PromptTemplateError: The template uses a variable or attribute the context
                does not have, or fails while rendering.
        """
        try:
            user = self._render_block("user", context)
            system = (
                self._render_block("system", context) if "system" in self._template.blocks else None
            )
        except jinja2.UndefinedError as exc:
            raise PromptTemplateError(
                f"{self.path}: {exc.message}; the template may use only the variables the "
                f"engine passes: {', '.join(sorted(context))}"
            ) from exc
        except jinja2.TemplateError as exc:
            raise PromptTemplateError(f"{self.path}: rendering failed: {exc}") from exc
        return RenderedPrompt(system=system.strip() if system else None, user=user.strip())

    def _render_block(self, block: str, context: dict[str, Any]) -> str:
        render = self._template.blocks[block]
        return "".join(render(self._template.new_context(context)))


def _template_file_name(name: str) -> str:
    return name if name.endswith(".j2") else f"{name}.j2"


def load_prompt_template(name: str, search_dirs: Sequence[Path] = ()) -> PromptTemplate:
    """Load and compile a prompt template by name.

    Args:
        name: Template name with or without ``.j2``, e.g. ``vlm_synthesis``.
        search_dirs: Folders searched before the built-in ``prompts/`` folder, e.g. the
            folder next to a manifest that names its own template.

    Raises:
        PromptTemplateError: No folder has the template, or it does not compile.
    """
    file_name = _template_file_name(name)
    folders = [Path(folder) for folder in search_dirs] + [resource_dir("prompts")]
    loader = jinja2.FileSystemLoader([str(folder) for folder in folders])
    environment = SandboxedEnvironment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    try:
        source, filename, _ = loader.get_source(environment, file_name)
        template = environment.get_template(file_name)
    except jinja2.TemplateNotFound as exc:
        searched = ", ".join(str(folder) for folder in folders)
        raise PromptTemplateError(
            f"prompt template {file_name!r} not found; searched {searched}"
        ) from exc
    except jinja2.TemplateSyntaxError as exc:
        raise PromptTemplateError(
            f"{exc.filename or file_name}:{exc.lineno}: invalid Jinja syntax: {exc.message}"
        ) from exc
    return PromptTemplate(file_name, Path(filename or file_name), template, source)


@cache
def _validator(schema_name: str) -> Draft202012Validator:
    schema = load_schema(schema_name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _excerpt(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def parse_json_reply(content: str, schema_name: str) -> dict[str, Any]:
    """Parse a reply as a JSON object and validate it against a built-in schema.

    One Markdown code fence around the JSON is removed, as models often add it even
    when asked not to; any other text around the JSON makes the reply invalid.

    Raises:
        InvalidReply: ``format.empty``, ``format.not_json`` (including refusals in plain
            text) or ``format.schema``, with the reason.
    """
    text = content.strip()
    if not text:
        raise InvalidReply("format.empty", "the reply is empty")
    fenced = _FENCED_JSON.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidReply(
            "format.not_json",
            f"the reply is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}): {_excerpt(content)!r}",
        ) from exc

    error = best_match(_validator(schema_name).iter_errors(data))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise InvalidReply(
            "format.schema",
            f"the reply does not match {schema_name}.schema.json at {where}: {error.message}",
        )
    return data


def invalid_reply_followup(rule_id: str, message: str) -> str:
    """Write the follow-up request that quotes a validation error to the model."""
    return (
        f"Your reply was rejected ({rule_id}): {message}\n"
        "Reply again with only the JSON object described above, with no other text."
    )

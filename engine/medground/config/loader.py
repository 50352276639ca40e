"""Load manifests, cue thresholds and phrasing files from disk, with located errors."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from medground.config.cues import CueThresholds
from medground.config.errors import ConfigError, Problem, choices_text, suggest
from medground.config.lexicon import Lexicon
from medground.config.manifest import Manifest
from medground.config.phrasings import PHRASING_VARIABLES, PhrasingFile
from medground.config.provider import ProviderConfig
from medground.config.validation import validate_document
from medground.config.yamlload import LoadedYaml, PathKey, load_yaml
from medground.resources import ResourceKind, load_schema, resource_dir

_ENV_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


@dataclass(frozen=True)
class LoadedManifest:
    """A validated manifest with where it came from and the resolved dataset root."""

    manifest: Manifest
    file: Path
    sha256: str
    root: Path
    source: LoadedYaml


def expand_env(value: str, file: Path) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in ``value``.

    Raises:
        ConfigError: when a variable without a default is not set.
    """

    def replace(match: re.Match[str]) -> str:
        name, default = match.group("name"), match.group("default")
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(
            [
                Problem(
                    file,
                    f"environment variable {name} is not set; set it or write ${{{name}:-default}}",
                    key="root",
                )
            ]
        )

    return _ENV_REF.sub(replace, value)


def load_manifest(path: Path, root_override: Path | None = None) -> LoadedManifest:
    """Load and validate a manifest and resolve its dataset root.

    Args:
        path: the manifest YAML file.
        root_override: a dataset root that replaces the manifest's ``root``.

    Raises:
        ConfigError: for any problem in the file, or a root that is not a folder.
    """
    path = Path(path)
    loaded = load_yaml(path)
    if not isinstance(loaded.data, dict):
        raise ConfigError(
            [Problem(path, "a manifest must be a YAML mapping (key: value lines)", 1, 1)]
        )
    manifest = validate_document(loaded, load_schema("manifest"), Manifest)
    sha256 = hashlib.sha256(loaded.text.encode("utf-8")).hexdigest()

    if root_override is not None:
        root = Path(root_override).expanduser()
        origin = "--root"
    else:
        root = Path(expand_env(manifest.root, path)).expanduser()
        if not root.is_absolute():
            root = path.resolve().parent / root
        origin = "root"
    root = root.resolve()
    if not root.is_dir():
        line, column = loaded.locate(("root",))
        raise ConfigError(
            [
                Problem(
                    path,
                    f"dataset root {root} (from {origin}) is not a folder; download the "
                    "dataset there, or pass 'mgr run --root PATH'",
                    line,
                    column,
                    "root",
                )
            ]
        )
    return LoadedManifest(manifest, path, sha256, root, loaded)


def resolve_declared_file(
    name: str,
    kind: ResourceKind,
    relative_to: Path,
    declared_at: tuple[LoadedYaml, PathKey] | None = None,
) -> Path:
    """Find a declared file: a path relative to the declaring file, else a built-in name.

    ``declared_at`` is the declaring document and the key that names the file, so that
    an error gives its line and column.

    Raises:
        ConfigError: naming the built-in files when neither exists.
    """
    candidate = (relative_to.parent / name).resolve()
    if candidate.is_file():
        return candidate
    builtin = resource_dir(kind) / name
    if builtin.is_file():
        return builtin
    available = sorted(p.name for p in resource_dir(kind).glob("*.yaml"))
    message = (
        f"{kind} file '{name}' not found next to this file or among the "
        f"built-in ones; {suggest(name, available)}available: {choices_text(available)}"
    )
    if declared_at is not None:
        document, key = declared_at
        raise ConfigError([document.problem(key, message)])
    raise ConfigError([Problem(relative_to, message)])


def load_lexicon(path: Path) -> Lexicon:
    """Load a query lexicon file."""
    return validate_document(load_yaml(path), load_schema("lexicon"), Lexicon)


def load_cues(path: Path) -> CueThresholds:
    """Load a cue threshold file."""
    return validate_document(load_yaml(path), load_schema("cues"), CueThresholds)


def phrasing_environment() -> SandboxedEnvironment:
    """Return the sandboxed Jinja environment used for every query template."""
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


def load_phrasings(path: Path) -> PhrasingFile:
    """Load a phrasing file and compile each template, checking the variables it uses.

    Raises:
        ConfigError: for a Jinja syntax error or an unknown variable, with the line.
    """
    loaded = load_yaml(path)
    phrasings = validate_document(loaded, load_schema("phrasings"), PhrasingFile)
    env = phrasing_environment()
    problems: list[Problem] = []
    ids: set[str] = set()
    for task in ("single", "multi", "relation"):
        for index, phrasing in enumerate(getattr(phrasings, task)):
            where = (task, index)
            if phrasing.id in ids:
                problems.append(
                    loaded.problem(
                        (*where, "id"), f"duplicate phrasing id '{phrasing.id}'; ids must be unique"
                    )
                )
            ids.add(phrasing.id)
            sources = [("text", phrasing.text)]
            if phrasing.when:
                sources.append(("when", "{{ " + phrasing.when + " }}"))
            for key, source in sources:
                try:
                    names = meta.find_undeclared_variables(env.parse(source))
                except jinja2.TemplateSyntaxError as exc:
                    problems.append(
                        loaded.problem((*where, key), f"Jinja syntax error: {exc.message}")
                    )
                    continue
                for name in sorted(names - set(PHRASING_VARIABLES)):
                    problems.append(
                        loaded.problem(
                            (*where, key),
                            f"unknown variable '{name}'; {suggest(name, PHRASING_VARIABLES)}"
                            f"valid: {choices_text(PHRASING_VARIABLES)}",
                        )
                    )
            for cue in phrasing.requires:
                if cue not in PHRASING_VARIABLES:
                    problems.append(
                        loaded.problem(
                            (*where, "requires"),
                            f"unknown cue '{cue}'; {suggest(cue, PHRASING_VARIABLES)}"
                            f"valid: {choices_text(PHRASING_VARIABLES)}",
                        )
                    )
    if problems:
        raise ConfigError(problems)
    return phrasings


def load_provider_file(loaded: LoadedManifest, name: str, key: PathKey) -> ProviderConfig:
    """Load the provider settings that a manifest's ``provider_file`` names.

    Args:
        loaded: The manifest, whose folder ``name`` is relative to.
        name: The ``provider_file`` value.
        key: Where ``provider_file`` sits in the manifest, e.g. ``("judge", "provider_file")``.

    Raises:
        ConfigError: The file is missing (located at ``key`` in the manifest), or its
            contents are invalid (located in the provider file).
    """
    path = (loaded.file.parent / name).resolve()
    if not path.is_file():
        raise ConfigError(
            [
                loaded.source.problem(
                    key,
                    f"provider file '{name}' not found (looked for {path}); the path is "
                    "relative to the manifest's folder",
                )
            ]
        )
    source = load_yaml(path)
    if not isinstance(source.data, dict):
        raise ConfigError(
            [Problem(path, "a provider file must be a YAML mapping, e.g. 'model: openai/gpt-4o'")]
        )
    return validate_document(source, load_schema("provider"), ProviderConfig)

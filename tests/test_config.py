"""Manifest, cue and phrasing loading: located errors and schema/model agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medground.config.errors import ConfigError
from medground.config.loader import load_manifest, load_phrasings
from medground.config.schemas import GENERATED, schema_text
from medground.config.yamlload import parse_yaml
from medground.resources import resource_dir

VALID = """\
name: toy
modality: endoscopy
root: data
images:
  glob: images/*.png
masks:
  - encoding: binary
    path: masks/{stem}.png
    class: polyp
classes:
  - name: polyp
"""


def write_manifest(tmp_path: Path, text: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "toy.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_committed_schema_matches_model(name: str) -> None:
    committed = (resource_dir("schemas") / f"{name}.schema.json").read_text()
    assert committed == schema_text(name), "run: python -m medground.config.schemas"


def test_valid_manifest_loads(tmp_path: Path) -> None:
    loaded = load_manifest(write_manifest(tmp_path, VALID))
    assert loaded.manifest.classes[0].display_name == "polyp"
    assert loaded.root == (tmp_path / "data").resolve()
    assert len(loaded.sha256) == 64


@pytest.mark.parametrize(
    ("old", "new", "pattern"),
    [
        pytest.param("images:\n  glob:", "images:\n  globs:",
                     r"toy.yaml:5:3: images.globs: unknown key 'globs'; did you mean 'glob'\?",
                     id="unknown-key-with-suggestion"),
        pytest.param("modality: endoscopy", "modality: endoscopic",
                     r"toy.yaml:2:1: modality: invalid value 'endoscopic'; did you mean "
                     r"'endoscopy'\? valid choices: .*dermoscopy",
                     id="invalid-choice"),
        pytest.param("  - encoding: binary", "  - encoding: bitmap",
                     r"toy.yaml:7:5: masks.0.encoding: invalid value 'bitmap' for 'encoding'; "
                     r"valid choices: binary, label_map, palette, per_class_files",
                     id="unknown-encoding"),
        pytest.param("    class: polyp", "    class: polyp\n    threshold: high",
                     r"toy.yaml:10:5: masks.0.threshold: expected an integer, got 'high'",
                     id="wrong-type-in-union-branch"),
        pytest.param("    class: polyp", "    class: adenoma",
                     r"toy.yaml:9:5: masks.0.class: masks.0 names class 'adenoma', which is "
                     r"not in classes",
                     id="class-not-declared"),
        pytest.param("    path: masks/{stem}.png", "    path: masks/{stm}.png",
                     r"toy.yaml:8:5: masks.0.path: masks.0.path uses unknown placeholder "
                     r"'\{stm\}'",
                     id="unknown-placeholder"),
        pytest.param("name: toy", "name: toy\nname: other",
                     r"duplicate key 'name'", id="duplicate-key"),
        pytest.param("classes:\n  - name: polyp", "classes:\n  - name: polyp\n bad: [",
                     r"YAML syntax error", id="yaml-syntax"),
    ],
)
def test_manifest_errors_are_located(tmp_path: Path, old: str, new: str, pattern: str) -> None:
    path = write_manifest(tmp_path, VALID.replace(old, new))
    with pytest.raises(ConfigError, match=pattern):
        load_manifest(path)


def test_missing_root_names_folder_and_fix(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, VALID.replace("root: data", "root: nowhere"))
    with pytest.raises(ConfigError, match=r"toy.yaml:3:1: root: dataset root .*nowhere .*--root"):
        load_manifest(path)


def test_root_expands_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOY_DATA", str(tmp_path / "data"))
    path = write_manifest(tmp_path, VALID.replace("root: data", "root: ${TOY_DATA:-x}"))
    assert load_manifest(path).root == (tmp_path / "data").resolve()


def test_root_override_wins(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    path = write_manifest(tmp_path, VALID)
    assert load_manifest(path, root_override=other).root == other.resolve()


def test_yaml_positions_are_one_based() -> None:
    loaded = parse_yaml("a: 1\nb:\n  - c: 2\n", Path("x.yaml"))
    assert loaded.positions[("b", 0, "c")] == (3, 5)


def test_phrasing_unknown_variable_is_located(tmp_path: Path) -> None:
    text = (resource_dir("prompts") / "template_queries.yaml").read_text()
    broken = text.replace("{{ cls }} in this {{ modality_noun }}", "{{ clss }} here", 1)
    path = tmp_path / "p.yaml"
    path.write_text(broken)
    with pytest.raises(ConfigError, match=r"p.yaml:\d+:\d+: single.0.text: unknown variable "
                       r"'clss'; did you mean 'cls'\?"):
        load_phrasings(path)


def test_phrasing_jinja_syntax_error(tmp_path: Path) -> None:
    text = (resource_dir("prompts") / "template_queries.yaml").read_text()
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("Where is the {{ cls }}?", "Where is the {{ cls }?", 1))
    with pytest.raises(ConfigError, match=r"Jinja syntax error"):
        load_phrasings(path)


def test_schema_is_valid_json() -> None:
    schema = json.loads((resource_dir("schemas") / "record.schema.json").read_text())
    assert schema["properties"]["task"]["enum"] == ["single", "multi", "relation"]


def test_undeclared_label_class_points_at_its_line(tmp_path: Path) -> None:
    text = VALID.replace(
        "  - encoding: binary\n    path: masks/{stem}.png\n    class: polyp",
        "  - encoding: label_map\n    path: masks/{stem}.png\n    labels: {1: polyp, 2: adenom}",
    )
    with pytest.raises(ConfigError, match=r"toy.yaml:9:\d+: masks.0.labels.2: .*'adenom'"):
        load_manifest(write_manifest(tmp_path, text))


def test_missing_rules_file_points_at_its_entry(tmp_path: Path) -> None:
    from medground.runner import load_pipeline

    path = write_manifest(tmp_path, VALID + "rules: [geometry.yaml, nothere.yaml]\n")
    with pytest.raises(ConfigError, match=r"toy.yaml:12:\d+: rules.1: rules file 'nothere.yaml'"):
        load_pipeline(path)

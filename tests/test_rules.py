"""Rule files: shipped examples, CLI, a rule file added to a manifest, and load errors."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from medground.cli import main
from medground.config.errors import ConfigError
from medground.resources import resource_dir
from medground.runner import RunOptions, run
from medground.verify.rules import builtin_rule_files, load_rules, run_examples

REPO = Path(__file__).resolve().parents[1]
SHIPPED = builtin_rule_files()
SHIPPED_RULESET = load_rules(SHIPPED)
EXAMPLES = run_examples(SHIPPED_RULESET)


def test_shipped_rule_files_found():
    names = {p.name for p in SHIPPED}
    assert {"geometry.yaml", "claims.yaml", "priors.yaml", "evidence.yaml"} <= names
    assert "lexicon.yaml" not in names
    assert "cues.yaml" not in names


@pytest.mark.parametrize(
    "result", EXAMPLES, ids=[f"{r.file.name}:{r.line}:{r.rule_id}" for r in EXAMPLES]
)
def test_shipped_example(result):
    assert result.actual == result.expected, result.note


@pytest.mark.parametrize("rule", SHIPPED_RULESET.rules, ids=lambda r: r.id)
def test_rule_has_pass_and_fail_example(rule):
    expected = {r.expected for r in EXAMPLES if r.rule_id == rule.id}
    assert "pass" in expected
    assert "fail" in expected


def test_cli_rules_test_passes():
    result = CliRunner().invoke(main, ["rules", "test"])
    assert result.exit_code == 0, result.output
    assert f"{len(EXAMPLES)} examples passed" in result.output


def test_cli_rules_test_reports_failure(tmp_path):
    bad = tmp_path / "local.yaml"
    bad.write_text(
        "version: 1\n"
        "rules:\n"
        "  - id: local.big\n"
        "    description: big boxes only\n"
        "    require: min_box_area >= 100\n"
        "    message: small\n"
        "examples:\n"
        "  - {rule: local.big, expect: pass, row: {min_box_area: 10}}\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["rules", "test", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:8: local.big: expected pass, got fail" in result.output


def test_cli_rules_list_and_columns():
    listed = CliRunner().invoke(main, ["rules", "list"])
    assert listed.exit_code == 0
    assert "claims.relation  [reject]" in listed.output
    assert "applies when:" in listed.output
    columns = CliRunner().invoke(main, ["rules", "columns"])
    assert columns.exit_code == 0
    assert "claim_negation" in columns.output
    assert "evidence_cnr" in columns.output


@pytest.fixture
def kvasir_root(shared_data: Path) -> Path:
    """The Kvasir-SEG sample folder, or skip when it is absent."""
    root = shared_data / "kvasir-seg"
    if not root.is_dir():
        pytest.skip(f"Kvasir-SEG sample not found at {root}")
    return root


def _copy_manifest(tmp_path: Path, root: Path, extra_rules: list[str]) -> Path:
    text = (REPO / "datasets" / "kvasir-seg.yaml").read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        if line.startswith("root:"):
            line = f"root: {root}"
        if line.startswith("rules:"):
            names = [
                str(resource_dir("rules") / n)
                for n in ("geometry.yaml", "claims.yaml", "priors.yaml", "evidence.yaml")
            ]
            line = "rules: [" + ", ".join(names + extra_rules) + "]"
        lines.append(line)
    path = tmp_path / "kvasir.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_added_rule_file_changes_rejections(tmp_path, kvasir_root):
    base = _copy_manifest(tmp_path, kvasir_root, [])
    run(base, RunOptions(out_dir=tmp_path / "base", previews=False))
    before = pl.read_parquet(tmp_path / "base" / "kvasir-seg" / "rejected.parquet")

    (tmp_path / "local.yaml").write_text(
        "version: 1\n"
        "rules:\n"
        "  - id: local.no_relations\n"
        "    description: this dataset keeps single-object queries only\n"
        "    require: task = 'single'\n"
        "    message: '{task} queries are not kept'\n",
        encoding="utf-8",
    )
    extended = _copy_manifest(tmp_path, kvasir_root, ["local.yaml"])
    run(extended, RunOptions(out_dir=tmp_path / "extended", previews=False))
    after = pl.read_parquet(tmp_path / "extended" / "kvasir-seg" / "rejected.parquet")

    assert "local.no_relations" not in before.get_column("rule_id").to_list()
    added = after.filter(pl.col("rule_id") == "local.no_relations")
    assert added.height > 0
    assert after.height == before.height + added.height
    samples = pl.read_parquet(tmp_path / "extended" / "kvasir-seg" / "samples.parquet")
    rejected_ids = set(added.get_column("key").to_list())
    verdicts = samples.filter(pl.col("sample_id").is_in(list(rejected_ids)))
    assert set(verdicts.get_column("rules_verdict").to_list()) == {"reject"}


def test_cli_rules_explain(tmp_path, kvasir_root):
    manifest = _copy_manifest(tmp_path, kvasir_root, [])
    run(manifest, RunOptions(out_dir=tmp_path, previews=False))
    run_dir = tmp_path / "kvasir-seg"
    sample_id = pl.read_parquet(run_dir / "samples.parquet").get_column("sample_id")[0]
    result = CliRunner().invoke(main, ["rules", "explain", str(run_dir), sample_id])
    assert result.exit_code == 0, result.output
    assert "claims.unique" in result.output
    assert "evidence_cnr" in result.output
    missing = CliRunner().invoke(main, ["rules", "explain", str(run_dir), "nope/x"])
    assert missing.exit_code == 2
    assert "no sample 'nope/x'" in missing.output


RULE_HEAD = "version: 1\nrules:\n"


def _rule(rule_id: str, require: str, severity: str = "reject") -> str:
    return (
        f"  - id: {rule_id}\n"
        f"    description: test rule\n"
        f'    require: "{require}"\n'
        f"    severity: {severity}\n"
        f"    message: failed\n"
    )


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        pytest.param(
            RULE_HEAD + _rule("bad.column", "box_area > 3"),
            r"bad\.yaml:5:5: .*rule bad\.column: unknown column 'box_area' in 'box_area > 3'; "
            r"did you mean 'min_box_area'",
            id="unknown-column",
        ),
        pytest.param(
            RULE_HEAD + _rule("bad.sql", "min_box_w >= AND 3"),
            r"bad\.yaml:5:5: .*rule bad\.sql: invalid SQL condition 'min_box_w >= AND 3'",
            id="sql-syntax",
        ),
        pytest.param(
            RULE_HEAD + _rule("bad.severity", "min_box_w >= 2", severity="fatal"),
            r"bad\.yaml:6:5: .*rule bad\.severity: invalid value 'fatal'; "
            r"valid choices: reject, warn",
            id="unknown-severity",
        ),
        pytest.param(
            RULE_HEAD + _rule("geometry.tiny_box", "min_box_w >= 2"),
            r"bad\.yaml:3:.*duplicate rule id 'geometry\.tiny_box', "
            r"first defined in .*geometry\.yaml:12",
            id="duplicate-id-across-files",
        ),
        pytest.param(
            RULE_HEAD + "  - id: bad.yaml\n    require: [unclosed\n",
            r"bad\.yaml:\d+:\d+: YAML syntax error",
            id="yaml-syntax",
        ),
    ],
)
def test_bad_rule_file_message(tmp_path, text, pattern):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=pattern):
        load_rules([resource_dir("rules") / "geometry.yaml", bad])


def test_override_in_later_file(tmp_path):
    local = tmp_path / "local.yaml"
    local.write_text(
        "version: 1\noverrides:\n  - {id: geometry.tiny_box, severity: warn}\n"
        "  - {id: claims.negation, enabled: false}\n",
        encoding="utf-8",
    )
    ruleset = load_rules([*SHIPPED, local])
    assert ruleset.by_id("geometry.tiny_box").spec.severity == "warn"
    assert ruleset.by_id("claims.negation") is None


def test_shipped_manifests_use_the_rule_files():
    for manifest in sorted((REPO / "datasets").glob("*.yaml")):
        text = manifest.read_text(encoding="utf-8")
        assert "rules: [geometry.yaml, claims.yaml, priors.yaml, evidence.yaml]" in text, manifest


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(0.99996, "0.99996", id="near-one-keeps-digits"),
        pytest.param(0.123456, "0.1235", id="four-significant-digits"),
        pytest.param(2.0, "2", id="whole-number"),
        pytest.param(None, "null", id="null"),
    ],
)
def test_message_values_are_not_rounded_away(value: object, shown: str) -> None:
    from medground.verify.rules import _show

    assert _show(value) == shown


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        pytest.param("covers {f:.1%}", {"f": 0.99996}, "covers 100.0%", id="percent"),
        pytest.param("covers {f}", {"f": 0.99996}, "covers 0.99996", id="plain-float"),
        pytest.param("side {s:.1%}", {"s": None}, "side null", id="null-with-spec"),
    ],
)
def test_message_format_specs(template: str, values: dict[str, object], expected: str) -> None:
    from medground.verify.rules import render_message

    assert render_message(template, values) == expected

"""The review page in headless Chromium from file://: decide, persist, download, report."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from medground.audit.cli import audit_group
from medground.audit.pack import load_pack
from medground.audit.stats import wilson_interval

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} not found; install Debian's browser with 'apt-get install -y chromium'",
    ),
]

# What the reviewer Alice decides, item by item; Bob marks every item correct.
ALICE = ["correct", "wrong_box", "wrong_text", "ambiguous", "correct", "correct"]

# The make_run fixture of conftest.py: writes a run folder and returns its path.
RunFactory = Callable[..., Path]


@pytest.fixture
def pack_dir(make_run: RunFactory, tmp_path: Path) -> Path:
    run_dir = make_run(n_records=8, n_rejected=3)
    out = tmp_path / "pack"
    result = CliRunner().invoke(
        audit_group,
        ["sample", str(run_dir), "--n", "4", "--include-rejected", "2", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            accept_downloads=True,
            viewport={"width": 1400, "height": 860},
        )
        try:
            yield context
        finally:
            context.close()


def download_decisions(page: Any, trigger: Any, path: Path) -> dict[str, Any]:
    with page.expect_download() as info:
        trigger()
    info.value.save_as(path)
    return json.loads(path.read_text(encoding="utf-8"))


def test_review_page_decisions_feed_report(
    pack_dir: Path, browser_context: Any, tmp_path: Path
) -> None:
    manifest = load_pack(pack_dir)
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((pack_dir / "index.html").as_uri())

    # No reviewer yet: deciding is blocked with a hint.
    assert page.locator("#progress-text").inner_text() == "0 / 6 decided"
    assert page.locator("button[data-verdict=correct]").is_disabled()
    page.locator("body").click()
    page.keyboard.press("1")
    assert "Enter your name" in page.locator("#hint").inner_text()

    page.fill("#reviewer", "Alice")
    page.press("#reviewer", "Enter")
    page.wait_for_function("document.getElementById('item-image').complete")
    assert page.evaluate("document.getElementById('item-image').naturalWidth") == 96

    # Item 1 by click, item 2 by key, item 3 with a comment typed first, then keys.
    page.click("button[data-verdict=correct]")
    assert "item-0002" in page.locator("#counter").inner_text()
    page.keyboard.press("2")
    page.keyboard.press("c")
    page.keyboard.type("label says left, lesion is right")
    page.keyboard.press("Escape")
    page.keyboard.press("3")
    page.keyboard.press("4")
    page.click("button[data-verdict=correct]")
    page.keyboard.press("1")
    assert page.locator("#progress-text").inner_text() == "6 / 6 decided"

    # Going back shows the stored verdict; B switches between boxed and clean images.
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("k")
    assert "item-0004" in page.locator("#counter").inner_text()
    assert page.get_attribute("button[data-verdict=ambiguous]", "aria-pressed") == "true"
    page.keyboard.press("b")
    assert page.get_attribute("#item-image", "src").endswith("item-0004.clean.png")
    page.keyboard.press("b")
    assert page.get_attribute("#item-image", "src").endswith("item-0004.png")

    # Decisions survive a reload (localStorage keyed by pack id and reviewer).
    page.reload()
    assert page.input_value("#reviewer") == "Alice"
    assert page.locator("#progress-text").inner_text() == "6 / 6 decided"
    alice = download_decisions(page, lambda: page.click("#download"), tmp_path / "alice.json")

    # A second reviewer on the same pack starts empty and decides by keyboard only.
    page.fill("#reviewer", "Bob")
    page.press("#reviewer", "Enter")
    assert page.locator("#progress-text").inner_text() == "0 / 6 decided"
    for _ in range(6):
        page.keyboard.press("1")
    bob = download_decisions(page, lambda: page.keyboard.press("d"), tmp_path / "bob.json")
    page.screenshot(path=str(tmp_path / "review-page.png"))
    assert errors == []

    assert alice["pack_id"] == bob["pack_id"] == manifest.pack_id
    assert alice["reviewer"] == "Alice"
    assert bob["reviewer"] == "Bob"
    assert [d["verdict"] for d in alice["decisions"]] == ALICE
    assert alice["decisions"][2]["comment"] == "label says left, lesion is right"
    assert [d["item_id"] for d in alice["decisions"]] == [i.item_id for i in manifest.items]

    result = CliRunner().invoke(
        audit_group, ["report", str(tmp_path / "alice.json"), str(tmp_path / "bob.json"), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)

    # Consensus is correct where Alice also chose correct (items 1, 5 and 6).
    kinds = [item.kind for item in manifest.items]
    agreed = [verdict == "correct" for verdict in ALICE]
    accepted = [ok for ok, kind in zip(agreed, kinds, strict=True) if kind == "accepted"]
    rejected = [ok for ok, kind in zip(agreed, kinds, strict=True) if kind == "rejected"]
    assert report["accepted"]["overall"] == wilson_interval(sum(accepted), 4).as_dict()
    assert report["rejected"]["false_rejection"] == wilson_interval(sum(rejected), 2).as_dict()
    (agreement,) = report["agreement"]
    # Alice: correct 3, one each of the others; Bob: correct 6. p_o = 0.5,
    # p_e = (3 * 6) / 36 = 0.5, so kappa is 0: agreement at chance level.
    assert agreement["observed_agreement"] == pytest.approx(0.5)
    assert agreement["kappa"] == pytest.approx(0.0)
    assert agreement["kappa_correct_vs_error"] == pytest.approx(0.0)

"""Issue #15: the Dagster UI tells the truth, checked in a real headless chromium.

A small materialized instance is served by a real ``dagster-webserver``; chromium loads the pages the README
shows and each must render its real content (asset names, our metadata table's header, every sensor and
schedule switched on) — a blank page or one still loading fails. Chromium comes from Debian
(``scripts/install_chromium.sh``, which the CI path runs).
"""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest
import yaml

from earnopt_assets_tests.conftest import DEFAULT_CATALOG
from earnopt_assets_tests.integration.browser import chromium_binary, headless_chromium
from earnopt_assets_tests.integration.ui_pages import (
    AUTOMATION,
    automation_names,
    materialize_for_ui,
    show,
    switch_states,
    ui_pages,
)
from earnopt_assets_tests.integration.webserver import running_webserver

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PROTOCOLS = ("honeygain", "storj", "akash")

def _automation() -> tuple[str, ...]:
    # Every schedule and sensor in the code location, so a new one is checked too; the README's at least.
    from earnopt_assets.definitions import defs

    names = automation_names(defs)
    assert set(AUTOMATION) <= set(names)
    return names


PAGES = ui_pages(partition="honeygain", automation=_automation())


@pytest.fixture(scope="module")
def ui_url(tmp_path_factory: pytest.TempPathFactory):
    if chromium_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium missing on CI: scripts/install_chromium.sh should have installed it")
        pytest.skip("chromium not installed (scripts/install_chromium.sh)")
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets.definitions import build_definitions
    from earnopt_assets.resources import resources_for
    from earnopt_assets.settings import EarnoptPaths
    from earnopt_assets.simulator import simulate

    root = tmp_path_factory.mktemp("ui")
    data_dir, home = root / "data", root / "dagster_home"
    data_dir.mkdir()
    raw = yaml.safe_load(DEFAULT_CATALOG.read_text())
    raw["protocols"] = [p for p in raw["protocols"] if p["name"] in PROTOCOLS]
    catalog_path = data_dir / "catalog.yaml"
    catalog_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    paths = EarnoptPaths(data_dir).ensure()
    telemetry = simulate(load_catalog(catalog_path), days=10, seed=3, end=pd.Timestamp.now("UTC").floor("h").tz_localize(None)).telemetry
    telemetry.to_parquet(paths.landing / "history.parquet", index=False)
    # No model training (the forecast falls back to its baseline): the pages, not the models, are under test.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EARNOPT_DATA_DIR", str(data_dir))
        env.setenv("EARNOPT_CATALOG", str(catalog_path))
        failed = materialize_for_ui(home, build_definitions(resources_for(data_dir, catalog_path)))
        assert not failed, f"materializing for the UI failed: {failed}"
        with running_webserver(home, data_dir, catalog_path, root / "webserver.log") as url:
            yield url


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as page:
        yield page


@pytest.mark.parametrize("ui_page", PAGES, ids=[p.name for p in PAGES])
def test_page_shows_its_real_content(ui_url: str, browser, ui_page) -> None:
    text = show(browser, ui_url, ui_page)
    for expected in ui_page.expected_text:
        assert expected in text
    if ui_page.running_switches:
        expected = dict.fromkeys(ui_page.running_switches, True)
        deadline = time.monotonic() + 15  # the switches render after the names
        while (states := switch_states(browser, ui_page.running_switches)) != expected and time.monotonic() < deadline:
            time.sleep(0.5)
        assert states == dict.fromkeys(ui_page.running_switches, True), f"not RUNNING on a fresh instance: {states}"


def test_a_page_without_the_expected_content_fails(ui_url: str, browser) -> None:
    from earnopt_assets_tests.integration.browser import PageTimeout
    from earnopt_assets_tests.integration.ui_pages import UIPage

    missing = UIPage("no such asset", "/assets/no_such_asset", ("no_such_column_%",), "unused.png")
    with pytest.raises(PageTimeout, match="no_such_column_%"):
        show(browser, ui_url, missing, timeout_s=4)
    assert switch_states(browser, ("no_such_sensor",)) == {"no_such_sensor": None}

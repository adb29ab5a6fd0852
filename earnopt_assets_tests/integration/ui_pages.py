"""The Dagster UI pages the README shows, and a materialized instance to show them (not a test module).

Shared by the browser test and ``scripts/screenshots.py``: each page has a path under the webserver, the text
that proves it rendered real content (asset names, one of our metadata table headers, sensor names), and
the file name of its screenshot in ``docs/img``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from earnopt_assets_tests.integration.browser import Page
from earnopt_assets_tests.integration.webserver import write_daemonless_instance

ASSET_NAMES = ("raw_earnings", "earnings_features", "earnings_model", "earnings_forecast", "anomaly_model",
               "anomalies", "alerts", "resource_allocation")
# Sensors and schedules the README promises; each must show as running on the automation page.
AUTOMATION = ("default_automation_condition_sensor", "landing_sensor", "model_retrain_sensor", "allocation_schedule",
              "daily_model_retrain")
# A column of the allocation table resource_allocation emits as a TableMetadataValue (units in the name).
ALLOCATION_TABLE_COLUMN = "proposed_share_%"
# The lineage graph truncates long node labels ("resour…_allocation"): match the visible end.
LINEAGE_LABELS = tuple(name if len(name) <= 18 else name[-11:] for name in ASSET_NAMES)


@dataclass(frozen=True)
class UIPage:
    name: str
    path: str
    expected_text: tuple[str, ...]
    screenshot: str
    # The automation page shows a switch per sensor and schedule: these must all be switched on.
    running_switches: tuple[str, ...] = field(default_factory=tuple)
    # The global lineage starts with every group collapsed; the UI's "Expand all groups" shortcut is Alt+E.
    expand_groups: bool = False
    # Metadata key to scroll into view before the screenshot (the tables sit below the scalar entries).
    scroll_to: str | None = None


def automation_names(defs: dg.Definitions) -> tuple[str, ...]:
    """Every schedule and sensor of the code location (the automation page must show each one running)."""
    repo = defs.get_repository_def()
    return tuple(sorted([s.name for s in repo.schedule_defs] + [s.name for s in repo.sensor_defs]))


def ui_pages(partition: str, automation: tuple[str, ...] = AUTOMATION) -> list[UIPage]:
    return [
        UIPage("asset lineage", "/asset-groups", LINEAGE_LABELS, "lineage.png", expand_groups=True),
        UIPage("earnings_model partition", f"/assets/earnings_model?view=partitions&partition={partition}",
               ("earnings_model", partition), "earnings_model_partition.png"),
        UIPage("resource_allocation", "/assets/resource_allocation", ("resource_allocation", ALLOCATION_TABLE_COLUMN),
               "resource_allocation.png", scroll_to="allocation_table"),
        UIPage("alerts", "/assets/alerts", ("alerts",), "alerts.png", scroll_to="open_alerts_by_rule"),
        UIPage("automation", "/automation", automation, "automation.png", running_switches=automation),
    ]


def switch_states(page: Page, names: tuple[str, ...]) -> dict[str, bool | None]:
    """Whether the on/off switch in the row of each named sensor/schedule is on (None: row not found).
    Each row holds a selection checkbox and the switch; the switch is the row's last checkbox."""
    script = """(names => {
      const out = {};
      for (const name of names) {
        const label = [...document.querySelectorAll('a, span, div')].find(e => e.children.length === 0 && e.innerText.trim() === name);
        let row = label;
        while (row && row.querySelectorAll('input[type=checkbox]').length < 2) row = row.parentElement;
        const boxes = row ? row.querySelectorAll('input[type=checkbox]') : [];
        out[name] = boxes.length === 2 ? boxes[1].checked : null;
      }
      return out;
    })(NAMES)"""
    return page.evaluate(script.replace("NAMES", json.dumps(list(names))))


def show(page: Page, base_url: str, ui_page: UIPage, timeout_s: float = 45) -> str:
    """Open ``ui_page``, dismiss Dagster's first-visit community dialog, expand the lineage groups if asked,
    and wait for its real content; returns the page text."""
    page.goto(base_url + ui_page.path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not page.click_button("Skip"):
        if ui_page.expected_text[0] in page.text() and "Join the Dagster community" not in page.text():
            break
        time.sleep(0.5)
    if ui_page.expand_groups:
        page.wait_for_text(["Global asset lineage"], timeout_s=timeout_s, settle_s=0.5)
        for _ in range(3):  # the shortcut only works once the graph has mounted
            page.press("e", "KeyE", 69, alt=True)
            time.sleep(1.0)
            if all(label in page.text() for label in ui_page.expected_text):
                break
    text = page.wait_for_text(ui_page.expected_text, timeout_s=max(5.0, deadline - time.monotonic()))
    if ui_page.scroll_to:
        page.evaluate(
            "(() => { const e = [...document.querySelectorAll('td, div, span')].find(e => e.children.length === 0 && "
            f"e.innerText.trim() === {json.dumps(ui_page.scroll_to)}); if (e) e.scrollIntoView({{block: 'start'}}); }})()"
        )
        time.sleep(0.5)
    return text


def materialize_for_ui(home: Path, defs: dg.Definitions, *, train: dict[str, dict] | None = None) -> list[str]:
    """Materialize the graph into the persistent instance at ``home`` (what the webserver reads), in the
    demo's stage order; ``train`` maps the partitions to train to their run config (tests keep models tiny;
    untrained protocols get the fallback forecast). Returns the stages that failed."""
    from earnopt_assets.demo import ALLOCATION_STAGE, DOWNSTREAM_STAGE, INGEST_STAGE, materialize_stage

    write_daemonless_instance(home)
    instance = dg.DagsterInstance.from_config(str(home))
    failed = []
    stages: list[tuple[tuple[str, ...], str | None, dict | None]] = [(INGEST_STAGE, None, None)]
    stages += [(("earnings_model",), partition, config) for partition, config in (train or {}).items()]
    stages.append((DOWNSTREAM_STAGE, None, None))
    stages.append((ALLOCATION_STAGE, None, None))  # its own run in the demo too, so upstream failures cannot skip it
    try:
        for keys, partition, config in stages:
            result = materialize_stage(defs, instance, list(keys), partition, config)
            if not result.success:
                failed.append(f"{','.join(keys)}[{partition or '-'}]")
    finally:
        instance.dispose()
    return failed

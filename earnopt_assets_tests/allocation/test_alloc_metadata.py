"""What the Dagster UI shows for resource_allocation: tables with units, one source per figure, true reasons,
no Python reprs, and the realised-vs-expected plot."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from earnopt_assets.allocation import store
from earnopt_assets.allocation.cycle import run_allocation_cycle
from earnopt_assets.allocation.plan import initial_allocation
from earnopt_assets.anomaly.store import ensure_state_tables
from earnopt_assets.defs.allocation import allocation_metadata
from earnopt_assets.simulator import simulate
from earnopt_assets.warehouse import connect
from earnopt_assets_tests.allocation.helpers import load_telemetry

END = datetime(2026, 11, 20, 12)
NOW = END + timedelta(minutes=20)
LOOSE = {"min_improvement_pct": 1.0, "min_net_benefit_usd_per_hour": 0.0, "max_change_l1": 12.0, "horizon_minutes": 1440.0}
REPR = re.compile(r"\b(None|nan|NaN|inf)\b|\[\]|\{\}|\{'|\['")
IMAGE = re.compile(r"\(data:image/png;base64,[^)]*\)")

ALLOCATION_COLUMNS = {
    "protocol", "current_share_%", "proposed_share_%", "change_pp", "action", "reason", "expected_current_usd_per_h",
    "expected_proposed_usd_per_h", "potential_usd_per_h", "cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb",
    "response_curve", "response_at_target_%",
}


def _catalog(small_catalog, tight: bool = False, **settings):
    host = small_catalog.host.model_copy(update={"cpu_cores": 4.0, "memory_gb": 6.0}) if tight else small_catalog.host
    return small_catalog.model_copy(update={"host": host, "allocation": small_catalog.allocation.model_copy(update=settings)})


@pytest.fixture
def warehouse(data_dir: Path, small_catalog) -> Path:
    db = data_dir / "earnopt.duckdb"
    load_telemetry(db, simulate(small_catalog, days=6, seed=5, end=END, inject_anomalies=False).telemetry)
    return db


def _cycle(db: Path, catalog, now: datetime = NOW):
    latest = db.parent / "allocation" / "latest.json"
    plan, realised = run_allocation_cycle(lambda: connect(db), catalog, latest, now=now)
    with connect(db) as conn:
        cycles = store.recent_cycles(conn, plan.device, limit=96)
    return plan, allocation_metadata(plan, catalog, cycles, realised, latest), json.loads(latest.read_text())


def _texts(metadata: dict) -> list[str]:
    """Every user-facing text of the metadata: plain strings, markdown/text values and table string cells."""
    texts = []
    for value in metadata.values():
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, (dg.MarkdownMetadataValue, dg.TextMetadataValue)):
            texts.append(IMAGE.sub("(image)", value.value))
        elif isinstance(value, dg.TableMetadataValue):
            texts += [str(cell) for record in value.records for cell in record.data.values() if isinstance(cell, str)]
    return texts


def _assert_no_reprs(metadata: dict) -> None:
    for text in _texts(metadata):
        assert not REPR.search(text), text
    for value in metadata.values():
        if isinstance(value, dg.TableMetadataValue):
            for record in value.records:
                for cell in record.data.values():
                    assert not (isinstance(cell, float) and cell != cell), record.data


def _restart_figures_agree(plan, metadata: dict, document: dict) -> None:
    actions = sorted(n for n, a in document["actions"].items() if a["action"] == "restart")
    assert sorted(plan.restarts) == actions == sorted(document["restarts"])
    assert metadata["restarts"] == len(actions)
    assert metadata["restarted_protocols"] == (", ".join(plan.restarts) or "none")
    prose = metadata["decision_analysis"].value
    assert f"{len(actions)} protocol(s) restart now ({', '.join(plan.restarts) or 'none'})" in prose
    table_actions = sorted(r.data["protocol"] for r in metadata["allocation_table"].records if r.data["action"] == "restart")
    assert table_actions == actions


def test_tables_have_units_and_one_row_per_protocol(warehouse: Path, small_catalog) -> None:
    plan, metadata, _ = _cycle(warehouse, small_catalog)
    table = metadata["allocation_table"]
    assert isinstance(table, dg.TableMetadataValue)
    assert {c.name for c in table.schema.columns} >= ALLOCATION_COLUMNS
    assert sorted(r.data["protocol"] for r in table.records) == sorted(plan.protocols)
    for record in table.records:
        p = plan.protocols[record.data["protocol"]]
        assert record.data["current_share_%"] == pytest.approx(100 * p.current, abs=0.01)
        assert record.data["change_pp"] == pytest.approx(100 * (p.proposed - p.current), abs=0.02)
        curve = plan.inputs.protocols[p.name].curve
        assert record.data["response_at_target_%"] == pytest.approx(100 * curve.relative(p.target), abs=0.06)
        assert record.data["response_curve"].startswith("learned at" if curve.learned else "power fit")
    utilisation = metadata["utilisation"]
    columns = [c.name for c in utilisation.schema.columns]
    assert columns[0] == "resource" and "unit" in columns and any(c.endswith("_%") for c in columns)
    assert {r.data["resource"]: r.data["unit"] for r in utilisation.records}["memory_gb"] == "GB"
    recent = metadata["recent_cycles"]
    assert {"cycle_time_utc", "expected_after_cycle_usd_per_h", "realised_usd_per_h", "realised_vs_expected_%"} <= {
        c.name for c in recent.schema.columns
    }
    _assert_no_reprs(metadata)


def test_kept_plan_restarts_nothing_and_says_so(data_dir: Path, small_catalog) -> None:
    """The UI bug: `restarts: []` next to a decision text listing restarts. The proposal's restarts are
    the cost of a move that did not happen; what restarts now is the one list behind the actions."""
    catalog = _catalog(small_catalog, tight=True, min_net_benefit_usd_per_hour=5.0)
    db = data_dir / "tight.duckdb"
    telemetry = simulate(catalog, days=6, seed=5, end=END, inject_anomalies=False).telemetry
    telemetry["allocation"] = telemetry["protocol"].map(initial_allocation(catalog))  # running shares that fit this host
    load_telemetry(db, telemetry)
    plan, metadata, document = _cycle(db, catalog)
    assert plan.status == "kept" and plan.decision.reallocation_cost.restarted  # the proposal would restart some
    _restart_figures_agree(plan, metadata, document)
    assert metadata["restarts"] == 0 and metadata["restarted_protocols"] == "none"
    prose = metadata["decision_analysis"].value
    assert f"would restart {len(plan.decision.reallocation_cost.restarted)} protocol(s)" in prose
    assert metadata["expected_gain_usd_per_h"].value == 0.0 == document["expected_gain_usd_per_hour"]
    for p in plan.protocols.values():  # every keep reason is true: the proposal differed and was not applied
        assert p.action == "keep"
        assert ("not applied" in p.reason) == (abs(p.proposed - p.current) > 1e-6)
    _assert_no_reprs(metadata)


def test_applied_plan_restart_figures_agree(warehouse: Path, small_catalog) -> None:
    catalog = _catalog(small_catalog, tight=True, **LOOSE)
    plan, metadata, document = _cycle(warehouse, catalog)
    assert plan.status == "applied" and plan.restarts
    _restart_figures_agree(plan, metadata, document)
    assert sorted(plan.restarts) == sorted(plan.decision.reallocation_cost.restarted)
    assert metadata["expected_gain_usd_per_h"].value == pytest.approx(plan.decision.improvement_usd_per_hour)
    assert "the proposed shares" in metadata["decision_analysis"].value
    _assert_no_reprs(metadata)


def test_degraded_and_rejected_cycles_stay_legible(warehouse: Path, small_catalog) -> None:
    with connect(warehouse) as conn:
        ensure_state_tables(conn)
        conn.execute(
            "INSERT INTO protocol_state (device, protocol, state, reason, since, updated_at) VALUES ('local', 'storj', 'degraded', 'no earnings for 6 h', ?, ?)",
            [NOW, NOW],
        )
    plan, metadata, document = _cycle(warehouse, small_catalog)
    assert plan.status == "kept" and plan.restarts == ["storj"]
    assert "in place" in plan.protocols["storj"].reason and "no earnings for 6 h" in plan.protocols["storj"].reason
    _restart_figures_agree(plan, metadata, document)
    assert metadata["degraded"] == "storj"
    _assert_no_reprs(metadata)

    host = small_catalog.host.model_copy(update={"memory_gb": 1.0, "reserved": small_catalog.host.reserved.model_copy(update={"memory_gb": 0.0})})
    crowded = small_catalog.model_copy(update={"host": host})
    plan, metadata, document = _cycle(warehouse, crowded, NOW + timedelta(minutes=15))
    assert plan.status == "rejected" and "FAILED" in metadata["decision_analysis"].value
    assert all(r.data["proposed_share_%"] is None for r in metadata["allocation_table"].records)  # empty cells, no 'nan'
    _restart_figures_agree(plan, metadata, document)
    _assert_no_reprs(metadata)


def test_realised_vs_expected_plot_over_past_cycles(warehouse: Path, small_catalog) -> None:
    _, metadata, _ = _cycle(warehouse, small_catalog)
    assert metadata["realised_vs_expected"].value.startswith("![")
    later = simulate(small_catalog, days=1, seed=9, end=END + timedelta(hours=6), inject_anomalies=False).telemetry
    load_telemetry(warehouse, later[later["ts"] > pd.Timestamp(END)])
    _, metadata, _ = _cycle(warehouse, small_catalog, END + timedelta(hours=6, minutes=5))
    assert metadata["realised_cycles_updated"] == 1
    assert "data:image/png;base64," in metadata["realised_vs_expected"].value
    realised = [r.data for r in metadata["recent_cycles"].records if r.data["realised_hours"]]
    assert len(realised) == 1 and realised[0]["realised_usd_per_h"] > 0
    _assert_no_reprs(metadata)

"""The Prometheus telemetry source against a REAL Prometheus server (Debian's ``prometheus``/``promtool``).

Simulated telemetry is rendered as CashPilot-named OpenMetrics, backfilled with ``promtool tsdb
create-blocks-from openmetrics`` and served on a free loopback port; the real asset runs through
``dg.materialize``. Outside CI a missing binary skips these tests with the reason; in CI (``CI=true``,
where ``scripts/install_system_deps.sh`` installs the package) it fails them.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import dagster as dg
import duckdb
import pandas as pd
import pytest
import yaml

from earnopt_assets.catalog import load_catalog, parse_catalog
from earnopt_assets.defs import ingestion
from earnopt_assets.defs.ingestion import (
    PROMETHEUS_OFF,
    prometheus_schedule,
    prometheus_telemetry,
    raw_earnings_freshness,
)
from earnopt_assets.ingestion import prometheus as prom
from earnopt_assets.ingestion import store
from earnopt_assets.ingestion.cashpilot_sim import LocalPrometheus, binaries_available, free_port, render_openmetrics
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets.simulator import simulate

PLATFORMS = {"honeygain": "Honeygain", "storj": "storj-node", "akash": "akash-provider"}
PAYOUT_BOUNDARY = 40  # honeygain pays out: the balance drops
LONG_GAP = list(range(50, 59))  # storj: 9 boundaries unscraped -> a 10 h segment, longer than 6 h: missing
SHORT_GAP = [60, 61]  # akash: 2 boundaries unscraped -> a 3 h segment: spread and imputed


@pytest.fixture(scope="module")
def binaries() -> None:
    if binaries_available():
        return
    message = "Debian's prometheus/promtool not installed (run scripts/install_system_deps.sh)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI installs them, so their absence is a failure")
    pytest.skip(message)


def _now_hour() -> pd.Timestamp:
    return pd.Timestamp(datetime.now(UTC).replace(tzinfo=None)).floor("h")


@pytest.fixture(scope="module")
def simulated():
    """4 days for three protocols whose last boundary sample is the previous hour boundary."""
    catalog = load_catalog()
    end = _now_hour() - pd.Timedelta(hours=2)  # last row's hour; its closing sample is at now_hour - 1 h
    return simulate(catalog, days=4, seed=11, end=end, protocols=list(PLATFORMS)).telemetry


@pytest.fixture(scope="module")
def server(binaries, simulated):
    text = render_openmetrics(simulated, PLATFORMS, payouts={"honeygain": [PAYOUT_BOUNDARY]},
                              gaps={"storj": LONG_GAP, "akash": SHORT_GAP})
    with LocalPrometheus(text) as running:
        yield running


def _configure(catalog_path, url: str, **extra) -> None:
    raw = yaml.safe_load(catalog_path.read_text())
    raw["sources"] = {"prometheus": {"url": url, "preset": "cashpilot", "cashpilot": PLATFORMS, "backfill_days": 5, "page_hours": 48, **extra}}
    catalog_path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _telemetry(paths: EarnoptPaths) -> pd.DataFrame:
    with duckdb.connect(str(paths.warehouse), read_only=True) as conn:
        return store.read_telemetry(conn, columns=["protocol", "ts", "earnings_usd", "cpu_cores", "memory_gb", "imputed"])


def _metadata(result: dg.ExecuteInProcessResult, asset: str = "prometheus_telemetry") -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.mark.slow
def test_backfill_through_dagster_reconciles_with_the_simulator(server, simulated, data_dir, small_catalog_path, small_resources):
    _configure(small_catalog_path, server.url)
    paths = EarnoptPaths(data_dir).ensure()
    result = dg.materialize([prometheus_telemetry], resources=small_resources)
    assert result.success
    meta = _metadata(result)
    per_protocol = {row.data["protocol"]: row.data for row in meta["per_protocol"].records}
    assert set(per_protocol) == set(PLATFORMS)
    assert per_protocol["storj"]["gap_h"] == len(LONG_GAP) and per_protocol["akash"]["gap_h"] == len(SHORT_GAP)
    assert per_protocol["honeygain"]["rows_pulled"] == 4 * 24 + 1 and per_protocol["honeygain"]["value_sparkline"]
    assert meta["rows_quarantined"] == 0

    got = _telemetry(paths).merge(simulated, on=["protocol", "ts"], suffixes=("", "_sim"), how="left")
    assert got["earnings_usd_sim"].notna().all()
    observed = got.loc[~got["imputed"]]
    assert (observed["earnings_usd"] - observed["earnings_usd_sim"]).abs().max() < 1e-9
    assert (observed["cpu_cores"] - observed["cpu_cores_sim"]).abs().max() < 1e-9
    assert (observed["memory_gb"] - observed["memory_gb_sim"]).abs().max() < 1e-9
    assert (got["earnings_usd"] >= 0).all()

    first = simulated["ts"].min()
    hour = lambda boundary: first + pd.Timedelta(hours=boundary - 1)  # noqa: E731 - the hour a boundary closes
    payout = got.loc[(got["protocol"] == "honeygain") & (got["ts"] == hour(PAYOUT_BOUNDARY))]
    assert len(payout) == 1 and abs(payout["earnings_usd"].item() - payout["earnings_usd_sim"].item()) < 1e-9  # a reset, not negative

    storj_hours = set(got.loc[got["protocol"] == "storj", "ts"])
    missing = {hour(b) for b in range(LONG_GAP[0], LONG_GAP[-1] + 2)}  # every hour touching the 10 h segment
    assert not storj_hours & missing, "a long scrape gap must leave its hours missing, never zeros"
    assert hour(LONG_GAP[0] - 1) in storj_hours and hour(LONG_GAP[-1] + 2) in storj_hours

    akash = got.loc[got["protocol"] == "akash"]
    imputed = akash.loc[akash["imputed"]]
    assert set(imputed["ts"]) == {hour(b) for b in range(SHORT_GAP[0], SHORT_GAP[-1] + 2)}
    assert abs(imputed["earnings_usd"].sum() - imputed["earnings_usd_sim"].sum()) < 1e-9  # spread, money conserved

    rows_before = len(got)
    second = dg.materialize([prometheus_telemetry], resources=small_resources)
    assert second.success and _metadata(second)["rows_inserted"] == 0 and _metadata(second)["rows_updated"] == 0
    assert len(_telemetry(paths)) == rows_before
    with duckdb.connect(str(paths.warehouse), read_only=True) as conn:
        cursors = store.read_source_cursors(conn, prom.SOURCE)
    assert set(cursors.values()) == {(_now_hour() - pd.Timedelta(hours=1)).to_pydatetime()}


@pytest.mark.slow
def test_server_stopped_mid_run_leaves_the_cursor(binaries, simulated, data_dir, small_catalog_path, small_resources, monkeypatch):
    text = render_openmetrics(simulated, PLATFORMS)
    with LocalPrometheus(text) as server:
        _configure(small_catalog_path, server.url, page_hours=24)
        paths = EarnoptPaths(data_dir).ensure()
        earlier = (_now_hour() - pd.Timedelta(hours=30)).to_pydatetime()
        with duckdb.connect(str(paths.warehouse)) as conn:
            prom.ingest_prometheus(conn, paths, load_catalog(small_catalog_path), now=earlier)
            cursors, rows = store.read_source_cursors(conn, prom.SOURCE), store.telemetry_totals(conn)[0]
        assert set(cursors.values()) == {pd.Timestamp(earlier).floor("h").to_pydatetime()}

        real_query_range, calls = prom.PrometheusClient.query_range, []

        def stop_after_first_page(self, query, start, end, step=prom.STEP):
            calls.append(query)
            if len(calls) == 2:  # the first request is in: the server goes away
                server.stop()
            return real_query_range(self, query, start, end, step)

        monkeypatch.setattr(prom.PrometheusClient, "query_range", stop_after_first_page)
        result = dg.materialize([prometheus_telemetry], resources=small_resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = failure.event_specific_data.error
    message = " ".join(e.message for e in (error, error.cause) if e is not None)
    # Mid-shutdown the server answers 503; once gone, the connection is refused: either way query and status are named.
    assert "query_range" in message and "cashpilot_" in message and ("unreachable" in message or "HTTP 503" in message)
    with duckdb.connect(str(paths.warehouse), read_only=True) as conn:
        assert store.read_source_cursors(conn, prom.SOURCE) == cursors
        assert store.telemetry_totals(conn)[0] == rows
    check = raw_earnings_freshness(config=ingestion.FreshnessConfig(max_lag_hours=3), earnopt=small_resources["earnopt"],
                                   duckdb=small_resources["duckdb"])
    assert check.passed is False  # the data stopped 30 h ago: the freshness check is red


@pytest.mark.slow
def test_live_exporter_newest_hour_arrives(binaries, simulated, data_dir, small_catalog_path, small_resources):
    """History is backfilled up to the previous hour boundary; a live prometheus-client exporter scraped
    by the same server supplies the current balance, so the hour that just ended arrives."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    honeygain = simulated.loc[simulated["protocol"] == "honeygain"]
    text = render_openmetrics(honeygain, {"honeygain": PLATFORMS["honeygain"]})
    last_balance = float(honeygain["earnings_usd"].sum())
    registry = CollectorRegistry()
    Gauge("cashpilot_earnings_balance_usd", "balance", ["platform"], registry=registry).labels("Honeygain").set(last_balance + 0.25)
    Gauge("cashpilot_container_cpu_percent", "cpu", ["service", "node"], registry=registry).labels("Honeygain", "node-1").set(12.5)
    Gauge("cashpilot_container_memory_mb", "memory", ["service", "node"], registry=registry).labels("Honeygain", "node-1").set(256)
    Gauge("cashpilot_health_score", "health", ["service"], registry=registry).labels("Honeygain").set(100)
    port = free_port()
    http_server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        with LocalPrometheus(text, scrape_targets=[f"127.0.0.1:{port}"]) as server:
            server.wait_for('cashpilot_earnings_balance_usd{job="exporter"}')
            raw = yaml.safe_load(small_catalog_path.read_text())
            raw["sources"] = {"prometheus": {"url": server.url, "preset": "cashpilot", "cashpilot": {"honeygain": "Honeygain"}, "backfill_days": 5}}
            small_catalog_path.write_text(yaml.safe_dump(raw, sort_keys=False))
            result = dg.materialize([prometheus_telemetry], resources=small_resources)
    finally:
        http_server.shutdown()
        thread.join(5)
    assert result.success
    got = _telemetry(EarnoptPaths(data_dir))
    newest = got["ts"].max()
    assert newest == _now_hour() - pd.Timedelta(hours=1), "the hour that just ended must arrive from the live sample"
    assert 0 < got.loc[got["ts"] == newest, "earnings_usd"].item() <= 0.25 + 1e-9


# ----------------------------------------------------------------------------- no server needed


def test_cashpilot_preset_needs_only_the_names(small_catalog):
    catalog = parse_catalog({**small_catalog.model_dump(exclude={"source"}), "sources": {"prometheus": {
        "url": "http://127.0.0.1:9", "preset": "cashpilot", "cashpilot": {"honeygain": "Honeygain", "storj": {"platform": "storj", "service": "storagenode"}}}}})
    queries = prom.protocol_queries(catalog.sources.prometheus, catalog)
    assert queries["honeygain"]["balance_usd"] == 'max(cashpilot_earnings_balance_usd{platform="Honeygain"})'
    assert queries["storj"]["cpu_cores"] == 'sum(cashpilot_container_cpu_percent{service="storagenode"}) / 100'
    assert queries["storj"]["memory_gb"] == 'sum(cashpilot_container_memory_mb{service="storagenode"}) / 1024'
    assert set(queries["honeygain"]) >= {"balance_usd", "cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb", "allocation", "connection_failures"}


def test_prometheus_settings_are_checked(small_catalog):
    base = small_catalog.model_dump(exclude={"source"})
    with pytest.raises(ValueError, match="user:password"):
        parse_catalog({**base, "sources": {"prometheus": {"url": "http://me:secret@prom:9090"}}})
    with pytest.raises(ValueError, match="unknown telemetry field"):
        parse_catalog({**base, "sources": {"prometheus": {"url": "http://prom:9090", "queries": {"storj": {"gpu": "x"}}}}})
    catalog = parse_catalog({**base, "sources": {"prometheus": {"url": "http://prom:9090", "queries": {"nope": {"earnings_usd": "x"}}}}})
    with pytest.raises(KeyError, match="nope"):
        prom.protocol_queries(catalog.sources.prometheus, catalog)
    assert load_catalog().sources.prometheus is None  # the shipped catalog keeps the source off


def test_credentials_come_from_the_environment_only(small_catalog):
    catalog = parse_catalog({**small_catalog.model_dump(exclude={"source"}), "sources": {"prometheus": {
        "url": "http://127.0.0.1:9", "auth": "bearer", "preset": "cashpilot", "cashpilot": {"storj": "storj"}}}})
    with pytest.raises(prom.PrometheusError, match="EARNOPT_PROMETHEUS_TOKEN"):
        prom.auth_from_env(catalog.sources.prometheus, {})
    headers, _ = prom.auth_from_env(catalog.sources.prometheus, {"EARNOPT_PROMETHEUS_TOKEN": "s3cr3t-token"})
    assert headers == {"Authorization": "Bearer s3cr3t-token"}
    with pytest.raises(prom.PrometheusError) as failure:  # nothing listens on port 9: the error names the query, never the token
        prom.pull_source(catalog, {}, environ={"EARNOPT_PROMETHEUS_TOKEN": "s3cr3t-token"})
    assert "unreachable" in str(failure.value) and "cashpilot_earnings_balance_usd" in str(failure.value)
    assert "s3cr3t" not in str(failure.value)


def test_error_answers_fail_with_query_and_status():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Failing(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b'{"status":"error","errorType":"unavailable","error":"TSDB not ready"}')

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with prom.PrometheusClient(f"http://127.0.0.1:{server.server_port}") as client, pytest.raises(prom.PrometheusError) as failure:
            client.query_range("up", datetime(2026, 1, 1), datetime(2026, 1, 2))
    finally:
        server.shutdown()
    assert "HTTP 503" in str(failure.value) and "'up'" in str(failure.value) and "TSDB not ready" in str(failure.value)


def test_off_unless_configured(data_dir, small_catalog_path, small_resources):
    result = dg.materialize([prometheus_telemetry], resources=small_resources)
    assert result.success and _metadata(result)["status"] == PROMETHEUS_OFF
    with dg.build_schedule_context(resources={"earnopt": small_resources["earnopt"]}, scheduled_execution_time=datetime(2026, 1, 1, 5, 5)) as context:
        skipped = prometheus_schedule(context)
    assert isinstance(skipped, dg.SkipReason) and "sources.prometheus" in skipped.skip_message
    assert prometheus_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    _configure(small_catalog_path, "http://127.0.0.1:9")
    with dg.build_schedule_context(resources={"earnopt": small_resources["earnopt"]}, scheduled_execution_time=datetime(2026, 1, 1, 5, 5)) as context:
        assert isinstance(prometheus_schedule(context), dg.RunRequest)


def test_lineage_prometheus_then_raw_earnings():
    from earnopt_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("prometheus_telemetry") in graph.get(dg.AssetKey("raw_earnings")).parent_keys


def test_same_shaped_queries_are_batched_and_escaped(small_catalog):
    catalog = parse_catalog({**small_catalog.model_dump(exclude={"source"}), "sources": {"prometheus": {
        "url": "http://127.0.0.1:9", "preset": "cashpilot", "cashpilot": {"honeygain": "Honey.gain+", "storj": "storj"},
        "queries": {"storj": {"memory_gb": 'avg(node_mem{job="x"})'}}}}})
    queries = prom.protocol_queries(catalog.sources.prometheus, catalog)
    plans = {p: {n: prom._field_plan(n, q, qs, batchable=True) for n, q in qs.items()} for p, qs in queries.items()}
    assert plans["honeygain"]["allocation"][0] == "derived" and plans["honeygain"]["bandwidth_mbps"] == ("const", 0.0)
    family, value = plans["honeygain"]["cpu_cores"][1]
    assert value == "Honey.gain+" and plans["storj"]["cpu_cores"][1][0] == family
    assert prom._batched_query(family, ["Honey.gain+", "storj"]) == (
        'sum by (service) (cashpilot_container_cpu_percent{service=~"Honey\\\\.gain\\\\+|storj"}) / 100')
    assert plans["storj"]["memory_gb"][0] == "batch" and plans["storj"]["memory_gb"][1][0][1] == "node_mem"
    # With a device label the per-device series must survive: nothing is batched.
    assert prom._field_plan("cpu_cores", queries["storj"]["cpu_cores"], queries["storj"], batchable=False)[0] == "query"

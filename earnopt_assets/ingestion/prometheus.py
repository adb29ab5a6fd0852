"""Telemetry pulled from Prometheus (``sources.prometheus`` in the catalog), with a CashPilot preset.

Reading: for each mapped protocol, each telemetry field's PromQL is evaluated with ``query_range`` at a
1 h step over the hour boundaries after the protocol's cursor (table ``source_cursors``, owned by
:mod:`~earnopt_assets.ingestion.store`), or over the last ``backfill_days`` on the first run, in pages of
at most ``page_hours`` points. For a balance, one more instant query at *now* adds the newest poll, so
the last complete hour is known as soon as it ends.

Balance, not ``increase()``: the balance is pulled as raw gauge samples (Prometheus' value at each
hour boundary, i.e. the newest sample within its 5 min lookback) and becomes ``balance_usd`` polls that
go through the same resampling as landing files (:mod:`~earnopt_assets.ingestion.balance`): payout =
reset, gaps spread and marked imputed, long outages missing, money conserved. ``increase()`` would
treat a drop as a counter reset too, but it extrapolates to the window edges (so hours do not sum to the
balance change), needs two samples inside each window, and would put a second differencing rule beside
the one landing files use. A configured ``earnings_usd`` query (e.g. an exporter of hourly earnings)
is evaluated at the end of its hour and stored as that hour.

Writing: the pulled rows become one :class:`~earnopt_assets.ingestion.run.FrameSource` per kind
(balance / earnings, all protocols) in the file contract and go through the landing path (validation, quarantine, balance resampling,
upsert); the cursors move in the same transaction. Any HTTP error, timeout or error answer raises
:class:`PrometheusError` naming the query and status before anything is written, so nothing moves.

CashPilot preset (``preset: cashpilot`` and ``cashpilot: {protocol: platform}``), per protocol with
platform ``P`` and service ``S`` (default ``P``), catalog cores per unit of allocation ``C``:

=====================  ==============================================================================
``balance_usd``        ``max(cashpilot_earnings_balance_usd{platform="P"})`` (USD)
``cpu_cores``          ``sum(cashpilot_container_cpu_percent{service="S"}) / 100``  (percent of one core -> cores)
``memory_gb``          ``sum(cashpilot_container_memory_mb{service="S"}) / 1024``  (MB -> GB, docker's MiB)
``allocation``         ``clamp(cpu_cores / C, 0, 1)``  (estimated: CashPilot has no share)
``bandwidth_mbps``,    ``vector(0)`` (not exported by CashPilot)
``storage_gb``,
``connection_failures``
=====================  ==============================================================================

``cashpilot_health_score`` is not in the telemetry contract and is not pulled. ``queries:`` overrides
any field per protocol. Credentials come from the environment only (``EARNOPT_PROMETHEUS_TOKEN``, or
``EARNOPT_PROMETHEUS_USER`` / ``EARNOPT_PROMETHEUS_PASSWORD``) and never reach a table or a log.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb
import httpx
import numpy as np
import pandas as pd
import pyarrow as pa

from earnopt_assets.catalog import PROMETHEUS_FIELDS, CashPilotName, Catalog, PrometheusSource
from earnopt_assets.ingestion import store
from earnopt_assets.ingestion.report import IngestReport
from earnopt_assets.ingestion.run import FrameSource, ingest_frames
from earnopt_assets.settings import EarnoptPaths

SOURCE = "prometheus"
STEP = timedelta(hours=1)
ENV_TOKEN = "EARNOPT_PROMETHEUS_TOKEN"
ENV_USER = "EARNOPT_PROMETHEUS_USER"
ENV_PASSWORD = "EARNOPT_PROMETHEUS_PASSWORD"
CONSTANT_ZERO = "vector(0)"
SPARK = "▁▂▃▄▅▆▇█"


class PrometheusError(RuntimeError):
    """Prometheus was down, slow or answered an error; the message names the query and the status."""


def _label(value: str) -> str:
    """A PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cashpilot_queries(platform: str, service: str, cores_per_allocation: float) -> dict[str, str]:
    """The CashPilot preset's PromQL per telemetry field (unit conversions in the module docstring)."""
    cpu = f"sum(cashpilot_container_cpu_percent{{service={_label(service)}}}) / 100"
    allocation = f"clamp(({cpu}) / {cores_per_allocation!r}, 0, 1)" if cores_per_allocation > 0 else "vector(1)"
    return {
        "balance_usd": f"max(cashpilot_earnings_balance_usd{{platform={_label(platform)}}})",
        "cpu_cores": cpu,
        "memory_gb": f"sum(cashpilot_container_memory_mb{{service={_label(service)}}}) / 1024",
        "allocation": allocation,
        "bandwidth_mbps": CONSTANT_ZERO,
        "storage_gb": CONSTANT_ZERO,
        "connection_failures": CONSTANT_ZERO,
    }


def protocol_queries(source: PrometheusSource, catalog: Catalog) -> dict[str, dict[str, str]]:
    """Catalog protocol -> telemetry field -> PromQL, from the preset and ``queries:`` (which wins per
    field). Every protocol name is checked against the catalog; fields the contract requires but no
    query gives default to ``vector(0)`` (bandwidth, storage, failures) or allocation 1."""
    out: dict[str, dict[str, str]] = {}
    for protocol, names in source.cashpilot.items():
        spec = catalog.require(protocol)
        names = names if isinstance(names, CashPilotName) else CashPilotName(platform=names)
        out[protocol] = cashpilot_queries(names.platform, names.service or names.platform, spec.cpu_cores)
    for protocol, fields in source.queries.items():
        catalog.require(protocol)
        merged = dict(out.get(protocol, {}))
        if "earnings_usd" in fields:
            merged.pop("balance_usd", None)
        merged.update(fields)
        out[protocol] = merged
    for protocol, fields in out.items():
        if "balance_usd" not in fields and "earnings_usd" not in fields:
            raise ValueError(f"sources.prometheus: protocol {protocol} needs a balance_usd or earnings_usd query")
        for name in ("bandwidth_mbps", "storage_gb", "connection_failures"):
            fields.setdefault(name, CONSTANT_ZERO)
        fields.setdefault("allocation", "vector(1)")
    return {p: out[p] for p in sorted(out) if catalog.require(p).enabled}


def auth_from_env(source: PrometheusSource, environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], httpx.Auth | None]:
    """Headers and auth for ``source.auth`` from the environment (never from the YAML)."""
    env = os.environ if environ is None else environ
    if source.auth == "bearer":
        token = (env.get(ENV_TOKEN) or "").strip()
        if not token:
            raise PrometheusError(f"sources.prometheus.auth is bearer but {ENV_TOKEN} is not set")
        return {"Authorization": f"Bearer {token}"}, None
    if source.auth == "basic":
        user, password = env.get(ENV_USER) or "", env.get(ENV_PASSWORD) or ""
        if not user:
            raise PrometheusError(f"sources.prometheus.auth is basic but {ENV_USER} is not set")
        return {}, httpx.BasicAuth(user, password)
    return {}, None


@dataclass
class PrometheusClient:
    """``/api/v1/query_range`` and ``/api/v1/query`` with a timeout; every failure is a :class:`PrometheusError`."""

    base_url: str
    timeout_seconds: float = 10.0
    headers: dict[str, str] = field(default_factory=dict)
    auth: httpx.Auth | None = None
    concurrency: int = 4
    requests: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="prometheus")
        self._client = httpx.Client(base_url=self.base_url.rstrip("/"), headers={"User-Agent": "earnopt-ingest/1", **self.headers},
                                    auth=self.auth, timeout=self.timeout_seconds, follow_redirects=False)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def map(self, function: Callable, items: list) -> list:
        """``function`` over ``items`` on the client's bounded pool, in order; the first error is raised."""
        return list(self._pool.map(function, items))

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, object], query: str) -> list[dict]:
        with self._lock:
            self.requests += 1
        try:
            response = self._client.get(path, params=params)
        except httpx.TimeoutException:
            raise PrometheusError(f"Prometheus at {self.base_url} timed out after {self.timeout_seconds:g} s on {path} query {query!r}") from None
        except httpx.HTTPError as exc:
            raise PrometheusError(f"Prometheus at {self.base_url} unreachable on {path} query {query!r}: {type(exc).__name__}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or body.get("status") != "success":
            detail = body.get("error") or response.text[:200]
            raise PrometheusError(f"Prometheus {path} query {query!r} failed: HTTP {response.status_code}: {detail}")
        return body["data"]["result"]

    def query_range(self, query: str, start: datetime, end: datetime, step: timedelta = STEP) -> list[dict]:
        """Matrix result: ``[{"metric": {...}, "values": [[unix_s, "value"], ...]}, ...]``."""
        params = {"query": query, "start": _unix(start), "end": _unix(end), "step": f"{int(step.total_seconds())}s"}
        return self._get("/api/v1/query_range", params, query)

    def query(self, query: str, at: datetime) -> list[dict]:
        """Vector result: ``[{"metric": {...}, "value": [unix_s, "value"]}, ...]``."""
        return self._get("/api/v1/query", {"query": query, "time": _unix(at)}, query)


def _unix(ts: datetime) -> float:
    return pd.Timestamp(ts).tz_localize("UTC").timestamp() if pd.Timestamp(ts).tzinfo is None else pd.Timestamp(ts).timestamp()


def _unix_to_ts(unix: pd.Series) -> pd.Series:
    """Prometheus' float seconds as naive UTC timestamps, to the millisecond (its resolution)."""
    return pd.to_datetime((unix.astype(float) * 1000).round().astype("int64"), unit="ms")


def floor_hour(ts: datetime) -> datetime:
    return pd.Timestamp(ts).floor("h").to_pydatetime()


@dataclass
class ProtocolPull:
    """What one protocol's pull brought (for the asset's metadata)."""

    protocol: str
    start: datetime | None
    end: datetime
    rows: int = 0
    last_ts: datetime | None = None
    gap_hours: int = 0
    values: list[float] = field(default_factory=list)

    @property
    def sparkline(self) -> str:
        return sparkline(self.values)


@dataclass
class PullResult:
    frames: list[FrameSource]
    cursors: dict[str, datetime]
    protocols: list[ProtocolPull]
    requests: int = 0
    seconds: float = 0.0


def sparkline(values: list[float], width: int = 48) -> str:
    """The last ``width`` values as block characters (empty when there are none)."""
    data = np.asarray([v for v in values if v == v][-width:], float)
    if data.size == 0:
        return ""
    low, high = float(data.min()), float(data.max())
    if high - low < 1e-12:
        return SPARK[3] * data.size
    return "".join(SPARK[round((v - low) / (high - low) * (len(SPARK) - 1))] for v in data)


def _series_points(result: list[dict], value_name: str, device_of: Callable[[dict], str], instant: bool = False) -> dict[tuple[str, float], float]:
    """A query result as {(device, unix seconds): value}; several series of one device are an error of the query."""
    points: dict[tuple[str, float], float] = {}
    for series in result:
        device = device_of(series.get("metric", {}))
        for t, v in [series["value"]] if instant else series.get("values", []):
            key = (device, float(t))
            if key in points:
                raise PrometheusError(f"{value_name}: the query returns several series per device; aggregate it (e.g. sum or max)")
            points[key] = float(v)
    return points


def pull(
    client: PrometheusClient,
    source: PrometheusSource,
    catalog: Catalog,
    cursors: Mapping[str, datetime],
    now: datetime,
) -> PullResult:
    """Query every mapped protocol from its cursor to the last hour boundary (plus the poll at ``now``
    for a balance). Returns the frames to ingest and the cursors to store with them; raises
    :class:`PrometheusError` on any failure (then nothing is written). Requests run on the client's
    bounded pool (``concurrency`` at a time)."""
    started = time.monotonic()
    now = pd.Timestamp(now).tz_localize(None) if pd.Timestamp(now).tzinfo else pd.Timestamp(now)
    now = now.floor("ms").to_pydatetime()
    end = floor_hour(now)
    default_device = source.device or catalog.host.device

    def device_of(labels: dict) -> str:
        if source.device_label and source.device_label in labels:
            value = labels[source.device_label]
            return source.devices.get(value, value)
        return default_device

    # One plan per protocol: for each field how it is answered (constant, a batched family, derived, a query).
    plans = []
    for protocol, queries in protocol_queries(source, catalog).items():
        cursor = cursors.get(protocol)
        start = floor_hour(cursor) + STEP if cursor is not None else end - timedelta(days=source.backfill_days)
        value_field = "balance_usd" if "balance_usd" in queries else "earnings_usd"
        how = {name: _field_plan(name, q, queries, batchable=source.device_label is None) for name, q in queries.items()}
        plans.append((protocol, start, value_field, queries, how))

    # Windows (pages, then the poll at now) per distinct start; protocols sharing a start share requests:
    # ``sum(m{service="a"})`` of many protocols is ONE ``sum by (service) (m{service=~"a|b"})`` per window.
    windows: dict[datetime, list[tuple[datetime, datetime | None]]] = {}
    for _, start, _, _, _ in plans:
        if start in windows:
            continue
        pages, page_start = [], start
        while page_start <= end:
            page_end = min(page_start + STEP * (source.page_hours - 1), end)
            pages.append((page_start, page_end))
            page_start = page_end + STEP
        windows[start] = [*pages, (now, None)]
    tasks: dict[tuple, str] = {}
    for protocol, start, value_field, _, how in plans:
        for window in windows[start]:
            if window[1] is None and value_field != "balance_usd":
                continue  # only a balance needs the poll at now
            for name, (kind, detail) in how.items():
                if kind == "batch":
                    family, _ = detail
                    tasks.setdefault(("batch", family, window), "")
                elif kind == "query":
                    tasks[("query", protocol, name, window)] = detail
    families: dict[tuple, list[str]] = {}
    for _, _, _, _, how in plans:
        for kind, detail in how.values():
            if kind == "batch":
                families.setdefault(detail[0], [])
                if detail[1] not in families[detail[0]]:
                    families[detail[0]].append(detail[1])

    def fetch(key: tuple) -> list[dict]:
        window = key[-1]
        query = _batched_query(key[1], families[key[1]]) if key[0] == "batch" else tasks[key]
        if window[1] is None:
            return client.query(query, window[0])
        return client.query_range(query, window[0], window[1])

    keys = list(tasks)
    results = dict(zip(keys, client.map(fetch, keys)))

    tables: dict[str, list[pa.Table]] = {}
    new_cursors, pulls = {}, []
    for protocol, start, value_field, queries, how in plans:
        pulled: list[pd.DataFrame] = []
        for window in windows[start]:
            instant = window[1] is None
            if instant and value_field != "balance_usd":
                continue
            # Join the fields on (device, time) in plain dicts (a pandas merge per field and hour costs more
            # than the requests): one row per sample of the value field; a field without a sample stays NaN.
            fields = {}
            for name, (kind, detail) in how.items():
                if kind == "batch":
                    family, label_value = detail
                    series = [r for r in results[("batch", family, window)] if r.get("metric", {}).get(family[2]) == label_value]
                    fields[name] = _series_points(series, name, lambda labels: default_device, instant=instant)
                elif kind == "query":
                    fields[name] = _series_points(results[("query", protocol, name, window)], name, device_of, instant=instant)
            base = fields.pop(value_field)
            if instant:  # the poll at now: only when newer than the last boundary
                base = {key: v for key, v in base.items() if key[1] > _unix(end)}
            base_devices = {device for device, _ in base}
            by_time = {}
            for name, points in fields.items():
                devices = {device for device, _ in points}
                if len(devices) == 1 and not devices & base_devices:  # a device-less aggregate joins on time alone
                    by_time[name] = {t: v for (_, t), v in points.items()}
            rows = []
            for (device, unix), value in base.items():
                row = {"device": device, "unix": unix, value_field: value}
                for name, (kind, detail) in how.items():
                    if kind == "const":
                        row[name] = detail
                    elif name in by_time:
                        row[name] = by_time[name].get(unix, np.nan)
                    elif name in fields:
                        row[name] = fields[name].get((device, unix), np.nan)
                for name, (kind, detail) in how.items():
                    if kind == "derived":  # clamp(cpu_cores / C, 0, 1), as its PromQL says
                        row[name] = min(max(row.get("cpu_cores", np.nan) / detail, 0.0), 1.0) if row.get("cpu_cores") == row.get("cpu_cores") else np.nan
                rows.append(row)
            joined = pd.DataFrame(rows)
            if len(joined):
                pulled.append(joined)
        boundary_rows = pd.concat(pulled, ignore_index=True) if pulled else pd.DataFrame()
        stats = ProtocolPull(protocol, start if start <= end else None, end)
        table = _contract_table(boundary_rows, protocol, queries, value_field)
        on_grid = pd.Series([], dtype="datetime64[ns]")
        if table.num_rows:
            ts = _unix_to_ts(boundary_rows["unix"])
            on_grid = ts[(ts >= start) & (ts <= end) & (ts == ts.dt.floor("h"))]
            stats.rows = table.num_rows
            stats.last_ts = ts.max().to_pydatetime()
            if len(on_grid):  # boundaries without a sample between the first and the last one pulled
                expected = int((on_grid.max() - on_grid.min()) / STEP) + 1
                stats.gap_hours = expected - on_grid.nunique()
            stats.values = boundary_rows.sort_values("unix")[value_field].tolist()
            tables.setdefault(value_field, []).append(table)
        pulls.append(stats)
        if table.num_rows and len(on_grid):
            # The newest boundary with data: hours after it (an ongoing scrape gap) are asked again next run.
            new_cursors[protocol] = on_grid.max().to_pydatetime()
    # One in-memory source per kind (balance / earnings): one validation query, one ingest-log row.
    frames = [
        FrameSource(name=f"prometheus:{kind.removesuffix('_usd')}:{now:%Y%m%dT%H%M%S}", table=pa.concat_tables(parts, promote_options="default"),
                    origin=f"prometheus {client.base_url}", file_format="prometheus")
        for kind, parts in sorted(tables.items())
    ]
    return PullResult(frames, new_cursors, pulls, client.requests, time.monotonic() - started)


_CONSTANT = re.compile(r"^\s*vector\(\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\)\s*$")


def _constant(query: str) -> float | None:
    """The number of a ``vector(<number>)`` query (answered locally, without a request), else None."""
    match = _CONSTANT.match(query)
    return float(match.group(1)) if match else None


_AGGREGATE = re.compile(r'^(sum|max|min|avg)\((\w+)\{(\w+)="((?:[^"\\]|\\.)*)"\}\)(.*)$')
_DERIVED_ALLOCATION = re.compile(r"^clamp\(\((.*)\) / ([0-9.eE+-]+), 0, 1\)$")


def _field_plan(name: str, query: str, queries: Mapping[str, str], batchable: bool) -> tuple[str, object]:
    """How one field is answered: ("const", value) for ``vector(N)``; ("derived", C) for the preset's
    ``clamp((<the cpu_cores query>) / C, 0, 1)``; ("batch", (family, label value)) for ``agg(m{l="v"})<rest>``,
    fetched for many protocols at once; else ("query", PromQL)."""
    constant = _constant(query)
    if constant is not None:
        return "const", constant
    derived = _DERIVED_ALLOCATION.match(query)
    if name == "allocation" and derived and derived.group(1) == queries.get("cpu_cores"):
        return "derived", float(derived.group(2))
    aggregate = _AGGREGATE.match(query)
    if batchable and aggregate:
        agg, metric, label, value, rest = aggregate.groups()
        return "batch", ((agg, metric, label, rest), value.replace('\\"', '"').replace("\\\\", "\\"))
    return "query", query


def _regex_literal(value: str) -> str:
    """``value`` as an exact match inside a PromQL (RE2) regex string literal."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\\\1", value).replace('"', '\\"')


def _batched_query(family: tuple[str, str, str, str], values: list[str]) -> str:
    agg, metric, label, rest = family
    alternatives = "|".join(_regex_literal(v) for v in values)
    return f'{agg} by ({label}) ({metric}{{{label}=~"{alternatives}"}}){rest}'


def _contract_table(rows: pd.DataFrame, protocol: str, queries: dict[str, str], value_field: str) -> pa.Table:
    """Rows in the landing file contract (``ts`` UTC; a balance at its sample time, an hourly earnings
    value at the start of the hour it ends)."""
    columns = [c for c in PROMETHEUS_FIELDS if c in queries and c != ("earnings_usd" if value_field == "balance_usd" else "balance_usd")]
    if rows.empty:
        return pa.table({"device": pa.array([], pa.string())})
    ts = _unix_to_ts(rows["unix"]).dt.tz_localize("UTC")
    if value_field == "earnings_usd":
        ts = ts - pd.Timedelta(hours=1)
    data: dict[str, pa.Array] = {
        "device": pa.array(rows["device"].astype(str).tolist(), pa.string()),
        "protocol": pa.array([protocol] * len(rows), pa.string()),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
    }
    for name in columns:
        values = rows[name].to_numpy(float) if name in rows else np.full(len(rows), np.nan)
        data[name] = pa.array(values, pa.float64(), mask=np.isnan(values))
    return pa.table(data)


@dataclass
class PrometheusRun:
    """One scheduled pull: what came back and what the ingestion did with it."""

    pull: PullResult
    report: IngestReport


def pull_source(
    catalog: Catalog,
    cursors: Mapping[str, datetime],
    now: datetime | None = None,
    environ: Mapping[str, str] | None = None,
) -> PullResult:
    """Pull from the catalog's Prometheus source (no warehouse connection held meanwhile)."""
    source = catalog.sources.prometheus
    if source is None:
        raise ValueError("no sources.prometheus in the catalog")
    now = now or datetime.now(UTC).replace(tzinfo=None)
    headers, auth = auth_from_env(source, environ)
    with PrometheusClient(source.url, source.timeout_seconds, headers, auth) as client:
        return pull(client, source, catalog, cursors, now)


def write_pull(conn: duckdb.DuckDBPyConnection, paths: EarnoptPaths, catalog: Catalog, result: PullResult) -> IngestReport:
    """Ingest a pull through the landing path; its cursors move in the same transaction."""
    written_at = datetime.now(UTC).replace(tzinfo=None)
    return ingest_frames(conn, result.frames, paths, catalog,
                         in_transaction=lambda c: store.write_source_cursors(c, SOURCE, result.cursors, written_at))


def read_cursors(conn: duckdb.DuckDBPyConnection) -> dict[str, datetime]:
    store.ensure_ingestion_tables(conn)
    return store.read_source_cursors(conn, SOURCE)


def ingest_prometheus(
    conn: duckdb.DuckDBPyConnection,
    paths: EarnoptPaths,
    catalog: Catalog,
    now: datetime | None = None,
    environ: Mapping[str, str] | None = None,
) -> PrometheusRun | None:
    """Read the cursors, pull, write (one connection throughout; the asset uses two short ones).
    None when no ``sources.prometheus`` is configured."""
    if catalog.sources.prometheus is None:
        return None
    result = pull_source(catalog, read_cursors(conn), now, environ)
    return PrometheusRun(result, write_pull(conn, paths, catalog, result))

"""Everything the asset modules show in the Dagster UI: TableMetadataValues (tables render inline), embedded
matplotlib figures as markdown images, and the prose renderers of each asset group (one section per group).
"""

from __future__ import annotations

import base64
import io

import pandas as pd


def pyplot():
    """matplotlib's pyplot on the headless Agg backend, imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_markdown(fig, alt: str) -> str:
    """Render ``fig`` to PNG, close it, and return it as an inline markdown image."""
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def _cell(value: object) -> object:
    """A metadata cell: plain Python scalars only, with missing values as None (rendered empty, never 'nan')."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
        if isinstance(value, float) and value != value:
            return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def table_metadata(frame: pd.DataFrame, *, descriptions: dict[str, str] | None = None, max_rows: int | None = None):
    """A DataFrame as a ``dg.TableMetadataValue`` that the Dagster UI renders inline.

    Column names should carry their unit (``share_%``, ``earnings_usd_per_h``); the schema types are
    inferred (bool, int, float, else string) and ``descriptions`` adds a tooltip per column. Missing
    values become empty cells, so no ``None``/``nan`` reaches the UI. Imports Dagster lazily so this
    module stays importable without it.
    """
    import dagster as dg

    descriptions = descriptions or {}
    shown = frame if max_rows is None else frame.head(max_rows)

    def column_type(dtype) -> str:
        if pd.api.types.is_bool_dtype(dtype):
            return "bool"
        if pd.api.types.is_integer_dtype(dtype):
            return "int"
        if pd.api.types.is_float_dtype(dtype):
            return "float"
        return "string"

    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(name=str(name), type=column_type(shown[name].dtype), description=descriptions.get(str(name)))
            for name in shown.columns
        ]
    )
    records = [
        dg.TableRecord({str(k): _cell(v) for k, v in zip(shown.columns, row)})
        for row in shown.itertuples(index=False, name=None)
    ]
    return dg.MetadataValue.table(records=records, schema=schema)


# ---- allocation
# Tables, prose and the realised-vs-expected plot of the resource_allocation asset. Shares are shown in
# percent of the host (`_%`), changes in percentage points (`_pp`), earnings in US dollars per hour.

ALLOCATION_RESOURCE_UNITS: dict[str, str] = {"cpu_cores": "cores", "memory_gb": "GB", "bandwidth_mbps": "Mbit/s", "storage_gb": "GB"}

ALLOCATION_COLUMN_DESCRIPTIONS: dict[str, str] = {
    "current_share_%": "share of the host the protocol runs at before this cycle",
    "proposed_share_%": "share the optimiser proposes (empty when the solver found no solution)",
    "change_pp": "proposed minus current, percentage points",
    "action": "what the orchestrator does after this cycle: restart, adjust (limits in place) or keep",
    "reason": "why that action",
    "expected_current_usd_per_h": "expected earnings at the current share",
    "expected_proposed_usd_per_h": "expected earnings at the proposed share",
    "potential_usd_per_h": "expected earnings at a 100 % share (p in E(x) = p r(x))",
    "response_curve": "the response r(x) the plan used: learned from telemetry at the shares seen (docs/MODELS.md), "
    "else the power fit x^beta",
    "response_at_target_%": "r at the share that runs after this cycle, percent of the earnings at a 100 % share",
    "cpu_cores": "CPU cores used by the share that runs after this cycle",
    "memory_gb": "memory (GB) used by the share that runs after this cycle",
    "bandwidth_mbps": "bandwidth (Mbit/s) used by the share that runs after this cycle",
    "storage_gb": "storage (GB) used by the share that runs after this cycle",
    "current_basis": "how the current share is known: applied plan (confirmed by telemetry or awaiting it), "
    "telemetry (last reported share), or catalog initial (nothing known; not in force)",
    "earnings_source": "where the expected earnings come from",
    "degraded": "the anomaly area marked the protocol degraded",
}


def allocation_frame(plan, catalog) -> pd.DataFrame:
    """One row per protocol: current vs proposed share (%), the change (pp), the action, expected $/h,
    and the resources used by the share that runs after the cycle (the proposed share when the plan is
    applied, else the current one)."""
    rows = []
    for p in plan.protocols.values():
        vector = catalog.require(p.name).resource_vector()
        rows.append(
            {
                "protocol": p.name,
                "current_share_%": 100.0 * p.current,
                "proposed_share_%": None if p.proposed is None else 100.0 * p.proposed,
                "change_pp": None if p.proposed is None else 100.0 * (p.proposed - p.current),
                "action": p.action,
                "reason": p.reason,
                "expected_current_usd_per_h": p.expected_current_usd_per_hour,
                "expected_proposed_usd_per_h": p.expected_proposed_usd_per_hour,
                "potential_usd_per_h": p.potential_usd_per_hour,
                "response_curve": _curve_text(plan.inputs.protocols[p.name].curve),
                "response_at_target_%": 100.0 * float(plan.inputs.protocols[p.name].curve.relative(p.target)),
                **{resource: round(vector[resource] * p.target, 4) for resource in ALLOCATION_RESOURCE_UNITS},
                "current_basis": plan.inputs.protocols[p.name].current_source.replace("_", " "),
                "earnings_source": p.forecast_source.replace("_", " "),
                "degraded": bool(p.degraded),
            }
        )
    frame = pd.DataFrame(rows)
    for column in ("current_share_%", "proposed_share_%", "change_pp"):
        frame[column] = frame[column].astype(float).round(2)
    for column in ("expected_current_usd_per_h", "expected_proposed_usd_per_h", "potential_usd_per_h"):
        frame[column] = frame[column].astype(float).round(6)
    frame["response_at_target_%"] = frame["response_at_target_%"].astype(float).round(1)
    return frame


def _curve_text(curve) -> str:
    if curve.learned:
        return (f"learned at {len(curve.knots)} shares seen ({100 * curve.knots[0]:.0f}-{100 * curve.knots[-1]:.0f} %), "
                "flat between and above them, 0 below")
    return f"power fit x^{curve.beta:.3f} ({curve.method.replace('_', ' ')})"


def utilisation_frame(plan, catalog) -> pd.DataFrame:
    """Per resource, how the whole machine splits after the cycle: the protocols (the allocation that runs
    after the cycle), earnopt's own ``reserved`` share (catalog ``host.reserved``), what is free, and the
    machine total; the first three add up to the total. The optimiser plans only over total - reserve, so
    the plan's utilisation percentages (% of that) are converted back to amounts of it here.
    ``proposal`` is the protocols' amount in the optimiser's proposal (protocols row only; empty when
    the solver found no solution)."""
    totals, available, reserved = catalog.host.totals(), catalog.host.available(), catalog.host.reserved.vector()
    rows = []
    for resource, unit in ALLOCATION_RESOURCE_UNITS.items():
        total = float(totals[resource])
        used = available[resource] * float(plan.target_utilization.get(resource, 0.0)) / 100.0
        proposed = plan.result.resource_utilization.get(resource) if plan.result.allocations else None
        parts = [
            ("protocols", used, None if proposed is None else available[resource] * float(proposed) / 100.0),
            ("earnopt reserve", reserved[resource], None),
            ("free", total - used - reserved[resource], None),
            ("machine total", total, None),
        ]
        for part, amount, proposal in parts:
            rows.append(
                {
                    "resource": resource,
                    "part": part,
                    "amount": round(amount, 4),
                    "unit": unit,
                    "share_of_machine_%": round(100.0 * amount / total, 2),
                    "proposal": None if proposal is None else round(proposal, 4),
                }
            )
    return pd.DataFrame(rows)


def _usd(value: float) -> str:
    return f"{value:.6f} $/h"


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


def allocation_decision_markdown(plan) -> str:
    """The reallocation decision with its arithmetic, in short prose (no Python reprs)."""
    import math

    d = plan.decision
    t = d.thresholds
    cost = d.reallocation_cost
    verdict = "reallocate" if d.reallocate else "keep"
    lines = [f"**Decision: {verdict}. Plan {plan.status}" + ("" if plan.checks_passed else ": a blocking check failed") + ".**"]
    if plan.result.allocations:
        if math.isfinite(d.improvement_pct):
            pct = f"{d.improvement_pct:+.2f} %"
        else:
            pct = "from zero current earnings"
        lines.append(
            f"The proposal is expected to earn {_usd(d.proposed_usd_per_hour)} against {_usd(d.current_usd_per_hour)} now: "
            f"{d.improvement_usd_per_hour:+.6f} $/h ({pct}; the rule needs at least {t.min_improvement_pct:g} %)."
        )
        lines.append(
            f"It changes the shares by {d.change_l1:.4f} in total (L1 distance; at most {t.max_change_l1:g}) and would restart "
            f"{len(cost.restarted)} protocol(s) ({_names(cost.restarted)}): restart cost {cost.total_usd:.6f} $ over "
            f"{t.horizon_minutes:g} min = {d.amortised_cost_usd_per_hour:.6f} $/h, so the net benefit is "
            f"{d.improvement_usd_per_hour:+.6f} - {d.amortised_cost_usd_per_hour:.6f} = {d.net_benefit_usd_per_hour:+.6f} $/h "
            f"(the rule needs more than {t.min_net_benefit_usd_per_hour:g} $/h)."
        )
        low, high = plan.gain_interval_80
        lines.append(
            f"The gain's 80 % interval is {low:+.6f} .. {high:+.6f} $/h; with risk aversion {plan.risk_aversion:g} the move must pay "
            f"its restart cost by {plan.risk_aversion:g} standard deviation(s) of the gain ({plan.gain_sd_usd_per_hour:.6f} $/h)."
        )
        labels = {"improvement_pct": "improvement %", "net_benefit": "net benefit", "change_within_tolerance": "change within tolerance"}
        failed = [labels.get(name, name.replace("_", " ")) for name, ok in d.criteria.items() if not ok]
        lines.append("Every criterion holds." if not failed else f"Criteria not met: {', '.join(failed)}.")
    else:
        lines.append(f"The solver found no allocation (status {plan.result.solver_status}), so the current shares stay.")
    if d.forced_reason:
        lines.append(f"Reallocation forced: {d.forced_reason}.")
    runs = "the proposed shares" if plan.applied else "the current shares"
    lines.append(
        f"After this cycle the host runs {runs}, expected {_usd(plan.expected_target_usd_per_hour)}; "
        f"{len(plan.restarts)} protocol(s) restart now ({_names(plan.restarts)})."
    )
    text = " ".join(lines[1:])
    bullets = [f"- check {c.name}: {'passed' if c.passed else 'FAILED (' + c.severity + ')'}: {c.description}" for c in plan.checks.values()]
    bullets += [f"- note: {note}" for note in plan.inputs.notes]
    return "\n\n".join([lines[0], text] + (["\n".join(bullets)] if bullets else []))


def recent_cycles_frame(cycles: pd.DataFrame) -> pd.DataFrame:
    """Recent cycles (newest first) from :func:`earnopt_assets.allocation.store.recent_cycles`, with units."""
    if cycles.empty:
        return pd.DataFrame(
            columns=["cycle_time_utc", "decision", "status", "proposal_gain_usd_per_h", "expected_after_cycle_usd_per_h",
                     "realised_usd_per_h", "realised_hours", "realised_vs_expected_%"]
        )
    return pd.DataFrame(
        {
            "cycle_time_utc": pd.to_datetime(cycles["created_at"]).dt.strftime("%Y-%m-%d %H:%M"),
            "decision": cycles["decision"].astype(str),
            "status": cycles["status"].astype(str),
            "proposal_gain_usd_per_h": cycles["expected_gain_usd_per_hour"].astype(float).round(6),
            "expected_after_cycle_usd_per_h": cycles["expected_target_usd_per_hour"].astype(float).round(6),
            "realised_usd_per_h": cycles["realised_usd_per_hour"].astype(float).round(6),
            "realised_hours": cycles["realised_hours"].fillna(0).astype(int),
            "realised_vs_expected_%": cycles["realised_vs_expected_pct"].astype(float).round(2),
        }
    )


def realised_vs_expected_markdown(cycles: pd.DataFrame) -> str:
    """A plot of expected (after-cycle) and realised $/h per past cycle; text when there is nothing to draw."""
    if cycles.empty:
        return "No allocation cycle recorded yet."
    frame = cycles.sort_values("created_at")
    times = pd.to_datetime(frame["created_at"])
    realised = frame[frame["realised_usd_per_hour"].notna()]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 5.5), dpi=100)
    ax.plot(times, frame["expected_target_usd_per_hour"].astype(float), marker="o", linewidth=2, label="expected after the cycle")
    if len(realised):
        ax.plot(pd.to_datetime(realised["created_at"]), realised["realised_usd_per_hour"].astype(float), marker="s",
                linewidth=2, label="realised (mean of the hours after it)")
    ax.set_xlabel("cycle time (UTC)", fontsize=13)
    ax.set_ylabel("earnings ($/h, all protocols)", fontsize=13)
    pending = "" if len(realised) else " (no realised hours yet)"
    ax.set_title(f"Realised vs expected earnings over the last {len(frame)} cycles{pending}", fontsize=14)
    ax.tick_params(labelsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=12, frameon=False)
    fig.autofmt_xdate()
    fig.tight_layout()
    return figure_markdown(fig, "realised vs expected earnings per cycle")


# ---- anomaly
# Renderers of the anomaly assets (anomaly_model, anomalies, alerts): domain results -> metadata dicts.


def _anomaly_hour(value: object) -> str:
    return "" if value is None or pd.isna(value) else f"{pd.Timestamp(value):%Y-%m-%d %H:00}"


def anomaly_score_histogram(scores) -> str | None:
    """A PNG histogram of IsolationForest decision scores, embedded as markdown (None without scores)."""
    if len(scores) == 0:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    ax.hist(scores, bins=60, color="#4477aa", label="training rows")
    ax.axvline(0.0, color="#cc3311", linestyle="--", label="threshold (0)")
    ax.set_xlabel("decision_function score (unitless; below 0 = anomalous)")
    ax.set_ylabel("rows (count)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return figure_markdown(fig, "score distribution")


def anomaly_model_metadata(training, contamination: float) -> dict:
    """Metadata of ``anomaly_model`` from a ``cycle.TrainingResult``."""
    import dagster as dg
    import numpy as np

    from earnopt_assets.anomaly.detector import DETECTION_FEATURES

    scores = training.training_scores
    quantiles = pd.DataFrame(
        {"quantile": ["min", "1%", "5%", "25%", "50%", "75%", "max"],
         "score": np.quantile(scores, [0, 0.01, 0.05, 0.25, 0.5, 0.75, 1.0]) if len(scores) else [None] * 7}
    )
    histogram = anomaly_score_histogram(scores)
    window = training.detector.training_window
    return {
        "version": training.detector.version,
        "contamination": contamination,
        "training_rows": training.training_rows,
        "excluded_alert_rows": training.excluded_alert_rows,
        "training_window": f"{_anomaly_hour(window.start)} .. {_anomaly_hour(window.end)} UTC",
        "features": ", ".join(DETECTION_FEATURES),
        "flagged_training_rows": training.flagged_training_rows,
        "path": dg.MetadataValue.path(str(training.version_dir)),
        "score_quantiles": table_metadata(quantiles),
        "score_distribution": dg.MetadataValue.md(histogram or "no complete training rows to plot"),
    }


def anomaly_scores_metadata(scored: pd.DataFrame, written: int, model_version: str, newest) -> dict:
    """Metadata of ``anomalies``: counts and the flagged rows (most anomalous first)."""
    from earnopt_assets.anomaly.detector import DETECTION_FEATURES

    flagged = scored.loc[scored["is_anomaly"]].sort_values("score") if not scored.empty else scored
    table = pd.DataFrame(
        {
            "protocol": flagged["protocol"].astype(str) if not flagged.empty else pd.Series(dtype=str),
            "hour_utc": [_anomaly_hour(t) for t in flagged["ts"]] if not flagged.empty else pd.Series(dtype=str),
            "score": flagged["score"].astype(float) if not flagged.empty else pd.Series(dtype=float),
            **{name: (flagged[name].astype(float) if not flagged.empty else pd.Series(dtype=float)) for name in DETECTION_FEATURES},
        }
    )
    return {
        "rows_scored": written,
        "rows_flagged": len(flagged),
        "model_version": str(model_version),
        "newest_hour_utc": _anomaly_hour(newest) or "no telemetry yet",
        "flagged": table_metadata(table, max_rows=50, descriptions={"score": "decision_function, unitless; below 0 = anomalous"}),
    }


def anomaly_state_changes_frame(changes) -> pd.DataFrame:
    """Protocol state changes of one cycle; a protocol seen for the first time comes from 'untracked'."""
    return pd.DataFrame(
        [
            {"protocol": c.protocol, "device": c.device, "from_state": c.from_state or "untracked", "to_state": c.to_state,
             "reason": c.reason, "alert_id": c.alert_id or "", "at_utc": f"{c.at:%Y-%m-%d %H:%M}" if c.at else ""}
            for c in changes
        ],
        columns=["protocol", "device", "from_state", "to_state", "reason", "alert_id", "at_utc"],
    )


def anomaly_states_frame(states: dict) -> pd.DataFrame:
    """Current state of every protocol after the cycle."""
    return pd.DataFrame(
        [
            {"protocol": protocol, "device": device, "state": row["state"], "since_utc": _anomaly_hour(row["since"]),
             "alert_id": row.get("alert_id") or "", "reason": row["reason"]}
            for (device, protocol), row in sorted(states.items(), key=lambda item: (item[0][1], item[0][0]))
        ],
        columns=["protocol", "device", "state", "since_utc", "alert_id", "reason"],
    )


def anomaly_new_alerts_frame(result) -> pd.DataFrame:
    """New (non-backfill) alerts of the cycle with their status after auto-resolve and whether they degrade."""
    from earnopt_assets.anomaly.rules import DEGRADING_RULES

    rows = []
    for d in result.decisions:
        if d.reason == "backfill":
            continue
        a = d.alert
        rows.append(
            {"hour_utc": _anomaly_hour(a.hour), "protocol": a.protocol, "rule": a.rule, "severity": a.severity,
             "status": result.alert_status.get(a.id, "open"),
             "degrades_protocol": a.severity == "critical" and a.rule in DEGRADING_RULES,
             "notify": d.reason if d.notify else "cooldown", "alert_id": a.id, "message": a.message}
        )
    return pd.DataFrame(rows, columns=["hour_utc", "protocol", "rule", "severity", "status", "degrades_protocol", "notify", "alert_id", "message"])


def anomaly_deliveries_frame(result) -> pd.DataFrame:
    """One row per notified alert and delivery attempt; an alert with no attempt says why it went nowhere."""
    by_alert: dict[str, list] = {}
    for attempt in result.attempts:
        by_alert.setdefault(attempt.alert_id, []).append(attempt)
    rows = []
    for alert in result.notified:
        tries = by_alert.get(alert.id, [])
        if not tries:
            outcome = "not sent: channels misconfigured" if result.config_error else (
                "not sent: no alert channel configured" if not result.channels else "not sent: below every channel's min_severity")
            rows.append({"alert_id": alert.id, "protocol": alert.protocol, "rule": alert.rule, "severity": alert.severity,
                         "channel": "none", "attempt": 0, "outcome": outcome, "http_status": "", "elapsed_ms": 0.0, "error": ""})
        for t in tries:
            rows.append({"alert_id": alert.id, "protocol": alert.protocol, "rule": alert.rule, "severity": alert.severity,
                         "channel": t.channel, "attempt": int(t.attempt), "outcome": "sent" if t.ok else "failed",
                         "http_status": "" if t.status_code is None else str(t.status_code),
                         "elapsed_ms": round(float(t.elapsed_ms), 1), "error": t.error or ""})
    return pd.DataFrame(rows, columns=["alert_id", "protocol", "rule", "severity", "channel", "attempt", "outcome", "http_status", "elapsed_ms", "error"])


def anomaly_cycle_metadata(result) -> dict:
    """Metadata of ``alerts`` from a ``cycle.AnomalyCycleResult``: counts, where the alerts went (plain
    words), and tables of new alerts, open alerts by rule/severity, deliveries, state changes and states."""
    import dagster as dg

    counts = result.delivery_counts
    open_by_rule = result.open_by_rule.copy()
    if not open_by_rule.empty:
        open_by_rule["open_alerts_count"] = open_by_rule["open_alerts_count"].astype(int)
    return {
        "candidates": len(result.candidates),
        "new_alerts": len(result.record.new),
        "duplicates_skipped": result.record.duplicates,
        "first_run_backfill": result.first_run,
        "backfilled_history": result.backfilled,
        "suppressed_by_cooldown": result.suppressed_by_cooldown,
        "notified": len(result.notified),
        "resolved_keys": len(result.record.resolved),
        "resolved_rows": result.record.resolved_rows,
        "deliveries_sent": counts["sent"],
        "deliveries_failed": counts["failed"],
        "deliveries_no_channel": counts["no_channel"],
        "delivery_attempts": len(result.attempts),
        "delivery": dg.MetadataValue.text(result.delivery_note),
        "channels": ", ".join(result.channels) or "none configured",
        "channel_config_error": result.config_error or "none",
        "newest_hour_utc": _anomaly_hour(result.newest_hour) or "no telemetry yet",
        "degraded_protocols": ", ".join(sorted(p for (_, p), row in result.states.items() if row["state"] == "degraded")) or "none",
        "new_alert_list": table_metadata(anomaly_new_alerts_frame(result), max_rows=100),
        "open_alerts_by_rule": table_metadata(
            open_by_rule, descriptions={"open_alerts_count": "open or acknowledged alerts"}
        ),
        "deliveries": table_metadata(anomaly_deliveries_frame(result), max_rows=100),
        "state_changes": table_metadata(anomaly_state_changes_frame(result.state_changes)),
        "protocol_states": table_metadata(anomaly_states_frame(result.states)),
    }


# ---- ingestion
# Plots and tables of the ingestion assets (raw_earnings, earnings_features). Times are UTC hours,
# earnings in US dollars.


def ingestion_daily_earnings_plot(raw: pd.DataFrame, days: int = 14) -> str | None:
    """Daily earnings per protocol over the last ``days`` days as an embedded PNG (markdown); None when
    there is no telemetry. The legend sits outside the axes so it never hides data."""
    if raw.empty:
        return None
    plt = pyplot()
    recent = raw.loc[raw["ts"] >= raw["ts"].max() - pd.Timedelta(days=days)]
    daily = recent.assign(day=recent["ts"].dt.floor("D")).pivot_table(index="day", columns="protocol", values="earnings_usd", aggfunc="sum")
    fig, ax = plt.subplots(figsize=(11, 4.8), dpi=100)
    daily.plot(ax=ax, legend=False, linewidth=1.6)
    ax.set_ylabel("earnings (USD per day)", fontsize=11)
    ax.set_xlabel("day (UTC)", fontsize=11)
    ax.set_title(f"Daily earnings per protocol, last {days} days", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(title="protocol", fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return figure_markdown(fig, "daily earnings per protocol")


def ingestion_latest_frame(lags: pd.DataFrame) -> pd.DataFrame:
    """Per (device, protocol): newest stored hour and its lag behind the wall clock (hours)."""
    return lags[["device", "protocol", "latest_hour_utc", "lag_h"]].reset_index(drop=True)


def ingestion_features_per_protocol(table: pd.DataFrame) -> pd.DataFrame:
    """Feature rows per protocol with their hour range and mean hourly earnings."""
    columns = ["protocol", "rows", "first_hour_utc", "last_hour_utc", "mean_earnings_usd_per_h"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    grouped = table.groupby("protocol").agg(rows=("ts", "size"), first=("ts", "min"), last=("ts", "max"), mean=("earnings_usd", "mean")).reset_index()
    return pd.DataFrame(
        {
            "protocol": grouped["protocol"].astype(str),
            "rows": grouped["rows"].astype("int64"),
            "first_hour_utc": grouped["first"].dt.strftime("%Y-%m-%d %H:%M"),
            "last_hour_utc": grouped["last"].dt.strftime("%Y-%m-%d %H:%M"),
            "mean_earnings_usd_per_h": grouped["mean"].astype(float).round(6),
        }
    )


INGESTION_PREVIEW_COLUMNS: dict[str, str] = {
    "device": "device",
    "protocol": "protocol",
    "ts": "hour_utc",
    "earnings_usd": "earnings_usd_per_h",
    "lag_24": "lag_24h_usd",
    "ma_24h": "ma_24h_usd",
    "ema_12": "ema_12h_usd",
    "volatility_24h": "volatility_24h_usd",
    "hour": "local_hour",
    "allocation": "allocation_share",
    "failure_rate_24h": "failure_rate_24h_per_h",
}


def ingestion_features_preview(table: pd.DataFrame, rows: int = 8) -> pd.DataFrame:
    """The newest feature rows, a few columns, renamed with their units."""
    preview = table[list(INGESTION_PREVIEW_COLUMNS)].tail(rows).rename(columns=INGESTION_PREVIEW_COLUMNS).reset_index(drop=True)
    preview["hour_utc"] = pd.to_datetime(preview["hour_utc"]).dt.strftime("%Y-%m-%d %H:%M")
    return preview


def ingestion_snapshots_frame(written: dict) -> pd.DataFrame:
    """Protocol -> Parquet snapshot path written by earnings_features."""
    return pd.DataFrame({"protocol": [str(p) for p in written], "snapshot_path": [str(path) for path in written.values()]})


# ---- forecasting
FORECAST_PLOT_SIZE_IN = (12, 5)
FORECAST_PLOT_DPI = 100


def forecast_scores_frame(scores: pd.DataFrame) -> pd.DataFrame:
    """Candidate scores of one training run (harness table) with units in the column names, best first."""
    columns = ["candidate", "role", "serves", "mape_%", "mase", "mae_usd", "rmse_usd", "coverage_80_%", "coverage_95_%", "origins_n", "zero_actuals_skipped", "ms_per_origin"]
    frame = scores[[c for c in columns if c in scores.columns]].copy()
    return frame.sort_values("mape_%", na_position="last").reset_index(drop=True)


def forecast_holdout_plot(holdout: pd.DataFrame, protocol: str, served: str, served_column: str | None = None) -> str:
    """Holdout forecasts vs actual as an inline PNG: the served source with its 80/95 % intervals, the
    challenger LSTM and the best other candidates; legend outside the data, axes with units."""
    if holdout is None or holdout.empty:
        return "_no holdout forecasts to plot_"
    plt = pyplot()
    ordered = holdout.sort_values(["target_ts", "origin_ts"]).drop_duplicates("target_ts", keep="last")
    x = pd.to_datetime(ordered["target_ts"])
    fig, ax = plt.subplots(figsize=FORECAST_PLOT_SIZE_IN, dpi=FORECAST_PLOT_DPI)
    if {"lower_95", "upper_95"} <= set(ordered.columns):
        ax.fill_between(x, ordered["lower_95"], ordered["upper_95"], color="tab:blue", alpha=0.12, label=f"{served} 95 % interval")
    if {"lower_80", "upper_80"} <= set(ordered.columns):
        ax.fill_between(x, ordered["lower_80"], ordered["upper_80"], color="tab:blue", alpha=0.25, label=f"{served} 80 % interval")
    ax.plot(x, ordered["actual"], color="black", linewidth=1.2, label="actual")
    served_column = served_column or served
    if served_column in ordered.columns:
        ax.plot(x, ordered[served_column], color="tab:blue", linewidth=1.4, label=f"{served} (serves)")
    styles = {"lstm": ("tab:red", "challenger LSTM"), "champion": ("tab:purple", "champion LSTM"), "seasonal_naive_24": ("tab:orange", "same hour yesterday"), "seasonal_naive_168": ("tab:green", "same hour last week")}
    for column, (color, label) in styles.items():
        if column in ordered.columns and column != served_column and ordered[column].notna().any():
            ax.plot(x, ordered[column], color=color, linewidth=0.9, alpha=0.8, label=label)
    for origin in pd.to_datetime(ordered["origin_ts"]).unique():
        ax.axvline(origin, color="grey", linewidth=0.4, alpha=0.5)
    ax.set_title(f"{protocol}: holdout forecasts, a new 24 h forecast at each grey line")
    ax.set_xlabel("hour (UTC)")
    ax.set_ylabel("earnings (USD per hour)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    fig.autofmt_xdate()
    fig.tight_layout()
    return figure_markdown(fig, f"{protocol} holdout forecast vs actual")


def forecast_serving_frame(rows: list[dict]) -> pd.DataFrame:
    """Which source serves each protocol and why (one row per protocol)."""
    columns = ["protocol", "source", "below_target", "mape_%", "next_24h_usd", "allocation_share", "model_version", "reason"]
    return pd.DataFrame(rows, columns=columns)


def forecast_rows_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The forecast rows just written, in UI units."""
    if rows.empty:
        return pd.DataFrame(columns=["protocol", "hour_utc", "earnings_usd_per_h", "lower_80_usd_per_h", "upper_80_usd_per_h", "lower_95_usd_per_h", "upper_95_usd_per_h", "source"])
    return pd.DataFrame(
        {
            "protocol": rows["protocol"].astype(str),
            "hour_utc": pd.to_datetime(rows["target_ts"]).dt.strftime("%Y-%m-%d %H:%M"),
            "earnings_usd_per_h": rows["value"].astype(float),
            "lower_80_usd_per_h": rows["lower_80"].astype(float),
            "upper_80_usd_per_h": rows["upper_80"].astype(float),
            "lower_95_usd_per_h": rows["lower_95"].astype(float),
            "upper_95_usd_per_h": rows["upper_95"].astype(float),
            "source": rows["source"].astype(str),
        }
    )


def forecast_decisions_frame(decisions: dict) -> pd.DataFrame:
    """Latest training verdict of every protocol: check, promotion and what serves (for the summary line)."""
    rows = []
    for protocol, decision in decisions.items():
        training = (decision.training or {}) if decision is not None else {}
        check = training.get("check") or {}
        rows.append(
            {
                "protocol": protocol,
                "check_passed": bool(check.get("passed")) if decision is not None else False,
                "promoted": bool(training.get("promoted")) if decision is not None else False,
                "serves": decision.source if decision is not None else "not trained",
                "below_target": bool(decision.below_target) if decision is not None else True,
                "why": "; ".join(check.get("reasons") or []) if decision is not None else "no training run yet",
            }
        )
    return pd.DataFrame(rows, columns=["protocol", "check_passed", "promoted", "serves", "below_target", "why"])


def forecast_check_summary(decisions: dict) -> str:
    """One line naming the protocols whose latest challenger failed its check (first entry of the metadata)."""
    frame = forecast_decisions_frame(decisions)
    failed = frame.loc[~frame["check_passed"]]
    total = len(frame)
    if failed.empty:
        return f"all {total} protocols passed mape_within_target"
    names = ", ".join(f"{r.protocol} (serves {r.serves})" for r in failed.itertuples())
    return f"{total - len(failed)} of {total} protocols passed mape_within_target; failing: {names}"

"""Markdown for Dagster materialization metadata: small tables and embedded matplotlib figures.

Plain Python (no Dagster); the asset modules wrap the strings in ``dg.MetadataValue.md``.
"""

from __future__ import annotations

import base64
import io

import pandas as pd


def markdown_table(
    frame: pd.DataFrame,
    *,
    float_format: str = "{:.6g}",
    empty: str = "_(empty)_",
    max_rows: int | None = None,
) -> str:
    """A small frame as a markdown table; ``|`` and newlines in cells are escaped so rows stay rows.

    With ``max_rows`` only the first rows are shown and a note counts the rest.
    """
    if frame.empty:
        return empty
    shown = frame if max_rows is None else frame.head(max_rows)

    def cell(value: object) -> str:
        if isinstance(value, float):
            return float_format.format(value)
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(str, shown.columns)) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    if max_rows is not None and len(frame) > max_rows:
        lines.append(f"\n_{len(frame) - max_rows} more rows_")
    return "\n".join(lines)


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

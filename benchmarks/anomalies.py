"""Anomaly detection benchmark: simulated telemetry with injected anomalies vs the detector and rules.

    .venv/bin/python benchmarks/anomalies.py [--days 90] [--seeds 7 11 23] [--catalog data/catalog.yaml]

How alerts map to labels: the simulator labels every affected hour (earnings_drop, resource_spike,
failure_burst, outage). Contiguous labelled hours of one protocol and type form an EVENT [start, end].
An alert of protocol p at hour h is a TRUE alert if some event of p has start <= h <= end + 2 h (the
grace covers rules that see an event through trailing windows); otherwise it is FALSE.

* precision (overall, per rule)        = true alerts / alerts (one alert = one protocol, rule and hour)
* recall per anomaly type (events)     = events with at least one true alert / events
* recall per anomaly type (hours)      = labelled hours with an alert of that protocol in that hour / hours
* false alerts per protocol-day        = false alerts / (protocols x days evaluated)
* false critical alerts / protocol-week = false critical alerts / (protocols x weeks evaluated)
* throughput                           = rows / s for detection features + scoring, and for the rules

The detector is fitted like the ``anomaly_model`` asset: on all hours except those the rules already
alerted on. Rules and scores are evaluated after the first simulated week (the warm-up the 7-day
baselines need; the simulator injects no anomaly there, and outages there are left out of the labels).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from earnopt_assets.anomaly.detector import AnomalyDetector, detection_features
from earnopt_assets.anomaly.rules import RULES, Alert, evaluate_rules
from earnopt_assets.catalog import load_catalog
from earnopt_assets.simulator import LABEL_TYPES, simulate

GRACE_HOURS = 2
END = "2026-01-01T00:00"


def label_events(labels: pd.DataFrame) -> pd.DataFrame:
    """Contiguous runs of labelled hours per (protocol, anomaly_type)."""
    rows = []
    for (protocol, kind), part in labels.sort_values("ts").groupby(["protocol", "anomaly_type"]):
        ts = pd.DatetimeIndex(part["ts"])
        breaks = np.flatnonzero(np.diff(ts) != pd.Timedelta(hours=1)) + 1
        for chunk in np.split(np.arange(len(ts)), breaks):
            rows.append({"protocol": protocol, "anomaly_type": kind, "start": ts[chunk[0]], "end": ts[chunk[-1]], "hours": len(chunk)})
    return pd.DataFrame(rows)


def match(alerts: list[Alert], events: pd.DataFrame) -> np.ndarray:
    grace = pd.Timedelta(hours=GRACE_HOURS)
    by_protocol = dict(events.groupby("protocol"))
    out = np.zeros(len(alerts), dtype=bool)
    for i, alert in enumerate(alerts):
        ev = by_protocol.get(alert.protocol)
        if ev is None:
            continue
        hour = pd.Timestamp(alert.hour)
        out[i] = bool(((ev["start"] <= hour) & (hour <= ev["end"] + grace)).any())
    return out


def run_once(catalog, days: int, seed: int) -> dict:
    sim = simulate(catalog, days=days, seed=seed, end=END)
    telemetry, labels = sim.telemetry, sim.labels
    specs = {p.name: p for p in catalog.protocols}
    settings = catalog.alerts
    start = pd.Timestamp(telemetry["ts"].min()) + pd.Timedelta(days=7)

    t0 = time.perf_counter()
    rule_alerts = evaluate_rules(telemetry, catalog, settings, start=start)
    rules_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    features = detection_features(telemetry, specs, settings.allocation_elasticity)
    features_seconds = time.perf_counter() - t0
    alerted = {(a.protocol, pd.Timestamp(a.hour)) for a in rule_alerts}
    train_mask = ~pd.Series(list(zip(features["protocol"], features["ts"]))).isin(alerted).to_numpy()
    t0 = time.perf_counter()
    detector = AnomalyDetector(contamination=settings.contamination).fit(features.loc[train_mask])
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = detector.decision_function(features)
    score_seconds = time.perf_counter() - t0
    scored = features.assign(score=scores, is_anomaly=scores < 0)
    scored = scored.loc[pd.to_datetime(scored["ts"]) >= start]
    if_alerts = evaluate_rules(telemetry.iloc[0:0], catalog, settings, scores=scored)
    alerts = sorted(rule_alerts + if_alerts, key=lambda a: (a.hour, a.protocol, a.rule))

    # Only what happened in the evaluated window counts (outages can fall into the warm-up week).
    labels = labels.loc[pd.to_datetime(labels["ts"]) >= start]
    events = label_events(labels)
    true = match(alerts, events)
    protocols = telemetry["protocol"].nunique()
    eval_days = (pd.Timestamp(telemetry["ts"].max()) - start) / pd.Timedelta(days=1) + 1 / 24
    alert_hours = {(a.protocol, pd.Timestamp(a.hour)) for a in alerts}
    grace = pd.Timedelta(hours=GRACE_HOURS)

    per_type = {}
    for kind in LABEL_TYPES:
        ev = events.loc[events["anomaly_type"] == kind]
        detected = 0
        for row in ev.itertuples():
            if any(a.protocol == row.protocol and row.start <= pd.Timestamp(a.hour) <= row.end + grace for a in alerts):
                detected += 1
        lab = labels.loc[labels["anomaly_type"] == kind]
        hit_hours = sum((p, pd.Timestamp(t)) in alert_hours for p, t in zip(lab["protocol"], lab["ts"]))
        per_type[kind] = {
            "events": len(ev),
            "event_recall": detected / len(ev) if len(ev) else float("nan"),
            "hours": len(lab),
            "hour_recall": hit_hours / len(lab) if len(lab) else float("nan"),
        }
    per_rule = {}
    for rule in RULES:
        idx = [i for i, a in enumerate(alerts) if a.rule == rule]
        per_rule[rule] = {"alerts": len(idx), "true": int(true[idx].sum()) if idx else 0}
    notified = np.array([a.severity != "info" for a in alerts])
    critical = np.array([a.severity == "critical" for a in alerts])
    return {
        "seed": seed,
        "rows": len(telemetry),
        "protocols": protocols,
        "eval_days": eval_days,
        "alerts": len(alerts),
        "precision": float(true.mean()) if len(alerts) else float("nan"),
        "precision_warning_plus": float(true[notified].mean()) if notified.any() else float("nan"),
        "false_per_protocol_day": float((~true).sum() / (protocols * eval_days)),
        "false_critical_per_protocol_week": float((critical & ~true).sum() / (protocols * eval_days / 7)),
        "false_critical": int((critical & ~true).sum()),
        "per_type": per_type,
        "per_rule": per_rule,
        "rules_rows_per_s": len(telemetry) / rules_seconds,
        "features_rows_per_s": len(telemetry) / features_seconds,
        "score_rows_per_s": len(features) / score_seconds,
        "fit_seconds": fit_seconds,
        "train_rows": int(train_mask.sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 11, 23])
    parser.add_argument("--catalog", default=str(Path(__file__).resolve().parent.parent / "data" / "catalog.yaml"))
    args = parser.parse_args(argv)
    catalog = load_catalog(args.catalog)
    print(f"anomaly benchmark: {len(catalog.enabled)} protocols x {args.days} days, seeds {args.seeds}, "
          f"contamination {catalog.alerts.contamination}, grace {GRACE_HOURS} h")
    results = [run_once(catalog, args.days, seed) for seed in args.seeds]
    for res in results:
        print(f"\n=== seed {res['seed']}: {res['rows']} rows, {res['alerts']} alerts over {res['eval_days']:.1f} days")
        print(f"{'anomaly type':<16}{'events':>8}{'event recall':>14}{'hours':>8}{'hour recall':>13}")
        for kind, m in res["per_type"].items():
            print(f"{kind:<16}{m['events']:>8}{m['event_recall']:>14.3f}{m['hours']:>8}{m['hour_recall']:>13.3f}")
        print(f"{'rule':<26}{'alerts':>8}{'true':>8}{'precision':>11}")
        for rule, m in res["per_rule"].items():
            if rule == "silent":  # measured against the wall clock: a replay has no live silence to find
                print(f"{rule:<26}{'-':>8}{'-':>8}{'-':>11}  (wall-clock rule, not replayed)")
                continue
            precision = f"{m['true'] / m['alerts']:.3f}" if m["alerts"] else "-"
            print(f"{rule:<26}{m['alerts']:>8}{m['true']:>8}{precision:>11}")
        print(f"precision overall (all alerts)          {res['precision']:.3f}")
        print(f"precision of notifiable alerts (>= warning) {res['precision_warning_plus']:.3f}")
        print(f"false alerts per protocol-day           {res['false_per_protocol_day']:.4f}")
        print(f"false critical alerts per protocol-week {res['false_critical_per_protocol_week']:.4f} ({res['false_critical']} in total)")
        print(f"throughput: rules {res['rules_rows_per_s']:,.0f} rows/s, detection features {res['features_rows_per_s']:,.0f} rows/s, "
              f"scoring {res['score_rows_per_s']:,.0f} rows/s (fit {res['fit_seconds']:.2f} s on {res['train_rows']} rows)")

    def median(key: str) -> float:
        return statistics.median(r[key] for r in results)

    def recall(kind: str) -> float:
        return statistics.median(r["per_type"][kind]["event_recall"] for r in results)

    print("\n=== medians over seeds vs targets")
    checks = [
        ("recall earnings_drop (events)", recall("earnings_drop"), ">=", 0.9),
        ("recall failure_burst (events)", recall("failure_burst"), ">=", 0.9),
        ("precision overall", median("precision"), ">=", 0.7),
        ("false critical / protocol-week", median("false_critical_per_protocol_week"), "<", 1.0),
    ]
    ok_all = True
    for name, value, op, target in checks:
        ok = value >= target if op == ">=" else value < target
        ok_all &= ok
        print(f"{name:<34}{value:>8.3f}  target {op} {target}  {'OK' if ok else 'MISSED'}")
    print(f"scoring throughput (median)        {median('score_rows_per_s'):>12,.0f} rows/s")
    print(f"rules throughput (median)          {median('rules_rows_per_s'):>12,.0f} rows/s")
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())

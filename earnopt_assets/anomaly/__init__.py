"""Anomaly detection and alerting: IsolationForest detector, deterministic rules, notification
channels and protocol health state. Plain Python; the Dagster wiring is in ``earnopt_assets.defs.anomalies``."""

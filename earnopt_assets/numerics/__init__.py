"""Numerics shared by forecasting, anomaly and allocation: response curves, seasonal-naive baselines, metrics.

Nothing here imports another earnopt package, so every domain package may import it.
"""

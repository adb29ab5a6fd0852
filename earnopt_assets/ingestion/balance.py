"""Balance polls -> hourly earnings. Plain pandas/NumPy, no warehouse.

Collectors report a cumulative ``balance_usd`` at their own cadence (every 55 ± 4 min, with outages),
never exactly on the hour. Every poll of a (device, protocol) series is kept at its exact time, ordered
by ts across files and runs, and turned into hourly earnings in three steps:

1. Increments between consecutive polls ``t_{i-1} < t_i``, payout-aware (a drop means the provider paid
   out and the balance restarted from 0, so what it shows now was earned since the reset; never
   negative earnings)::

       d_i = b_i - b_{i-1}     if b_i >= b_{i-1}
       d_i = b_i               if b_i <  b_{i-1}     (payout / reset)

2. Cumulative earnings ``E(t_0) = 0``, ``E(t_i) = E(t_{i-1}) + d_i``, linear between polls (the
   balance resampled piecewise-linearly, restarting at each payout).

3. Hour ``h`` (the row ``ts = h``, earnings of ``[h, h + 1 h)``) gets ``E(h + 1 h) - E(h)`` when it is
   fully covered by polls (``t_0 <= h`` and ``h + 1 h <= t_last``). Hours touched by a segment longer
   than ``imputed_after_hours`` (default 2 h: no poll within the hour or next to it) are marked
   ``imputed`` (the segment's earnings spread evenly over its hours). Hours touched by a segment longer
   than ``max_gap_hours`` (default 6 h) stay missing: a long outage is not spread.

Money is conserved: over any run of emitted hours ``[A, B)``, the hourly earnings sum to ``E(B) - E(A)``
(to float rounding), so with polls at ``A`` and ``B`` they sum to the observed increments. Every poll is
used (two polls in one clock hour are both real); the first poll of a series is its baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

HOUR_NS = 3_600_000_000_000


@dataclass(frozen=True)
class ResampleSettings:
    """Limits of the hourly resampling (hours)."""

    imputed_after_hours: float = 2.0
    max_gap_hours: float = 6.0


def _series_hours(ts_ns: np.ndarray, balance: np.ndarray, settings: ResampleSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One series (ts ascending, unique): (hour starts ns, earnings, imputed, index of the poll closing
    the hour's first segment), only for hours fully covered by segments no longer than ``max_gap_hours``."""
    empty = np.empty(0, np.int64), np.empty(0), np.empty(0, bool), np.empty(0, np.int64)
    if len(ts_ns) < 2:
        return empty
    increments = np.where(balance[1:] >= balance[:-1], balance[1:] - balance[:-1], balance[1:])
    cumulative = np.concatenate([[0.0], np.cumsum(increments)])
    first = -(-ts_ns[0] // HOUR_NS) * HOUR_NS  # ceil to the hour
    last = (ts_ns[-1] // HOUR_NS) * HOUR_NS  # the last hour boundary covered
    if last - first < HOUR_NS:
        return empty
    bounds = np.arange(first, last + 1, HOUR_NS, dtype=np.int64)
    # Interpolate on offsets from t_0 (float64 holds ns offsets of years exactly enough for 1e-9 USD).
    offsets = (ts_ns - ts_ns[0]).astype(np.float64)
    level = np.interp((bounds - ts_ns[0]).astype(np.float64), offsets, cumulative)
    earnings = np.diff(level)
    starts = bounds[:-1]
    # Segments an hour [h, h+1) overlaps: k from a = first poll > h to b = first poll >= h+1 (segment k = (t_{k-1}, t_k)).
    a = np.searchsorted(ts_ns, starts, side="right")
    b = np.searchsorted(ts_ns, starts + HOUR_NS, side="left")
    lengths = np.concatenate([[0], np.diff(ts_ns), [0]]).astype(np.float64) / HOUR_NS
    pairs = np.empty(2 * len(starts), np.int64)
    pairs[0::2], pairs[1::2] = a, b + 1
    longest = np.maximum.reduceat(lengths, pairs)[0::2]
    keep = longest <= settings.max_gap_hours
    imputed = longest > settings.imputed_after_hours
    return starts[keep], earnings[keep], imputed[keep], a[keep]


def derive_hourly_earnings(series: pd.DataFrame, settings: ResampleSettings | None = None) -> tuple[pd.DataFrame, int]:
    """Resample stored balance polls into hourly earnings (rules in the module docstring).

    ``series``: every stored poll of the affected series, ordered by (device, protocol, ts) with exact
    poll times, with ``balance_usd``, the measurement columns, ``since`` (earliest poll of the series in
    this batch) and ``file_index`` (-1 for a poll stored by an earlier batch). Returns the hourly rows
    that a poll from ``since`` on can change (hours ending after the poll before ``since``), with
    ``value`` (USD, rounded to 1e-12) and ``imputed`` instead of ``balance_usd``; the measurement columns
    and ``file_index`` are those of the first poll after the hour starts. Also returns how many polls of
    this batch are the baseline of their series.
    """
    settings = settings or ResampleSettings()
    out_columns = [c for c in series.columns if c not in ("balance_usd", "since")] + ["value", "imputed"]
    if series.empty:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in out_columns}), 0
    series = series.reset_index(drop=True)
    ts_ns = pd.to_datetime(series["ts"]).to_numpy("datetime64[ns]").astype(np.int64)
    since_ns = pd.to_datetime(series["since"]).to_numpy("datetime64[ns]").astype(np.int64)
    balance = series["balance_usd"].to_numpy(float)
    file_index = series["file_index"].to_numpy()
    codes = series.groupby(["device", "protocol"], sort=False).ngroup().to_numpy()
    boundaries = np.flatnonzero(np.diff(codes)) + 1
    starts_of = np.concatenate([[0], boundaries])
    ends_of = np.concatenate([boundaries, [len(series)]])
    baselines = int(np.count_nonzero(file_index[starts_of] >= 0))
    pieces_rows, pieces_hours, pieces_values, pieces_imputed = [], [], [], []
    for lo, hi in zip(starts_of, ends_of):
        hours, earnings, imputed, closing = _series_hours(ts_ns[lo:hi], balance[lo:hi], settings)
        if not len(hours):
            continue
        # Only hours a poll of this batch can change: those ending after the poll before ``since``.
        first_new = int(np.searchsorted(ts_ns[lo:hi], since_ns[lo], side="left"))
        anchor = ts_ns[lo + max(first_new - 1, 0)]
        mask = hours + HOUR_NS > anchor
        pieces_rows.append(lo + np.minimum(closing[mask], hi - lo - 1))
        pieces_hours.append(hours[mask])
        pieces_values.append(earnings[mask])
        pieces_imputed.append(imputed[mask])
    if not pieces_rows:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in out_columns}), baselines
    rows = np.concatenate(pieces_rows)
    derived = series.iloc[rows].drop(columns=["balance_usd", "since"]).reset_index(drop=True)
    derived["ts"] = pd.to_datetime(np.concatenate(pieces_hours), unit="ns")
    derived["value"] = np.maximum(np.round(np.concatenate(pieces_values), 12), 0.0)
    derived["imputed"] = np.concatenate(pieces_imputed)
    return derived, baselines

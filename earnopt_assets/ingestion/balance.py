"""Balance polls -> hourly earnings. Plain pandas, no warehouse.

Some collectors report a cumulative ``balance_usd`` instead of hourly ``earnings_usd``. The polls of a
(device, protocol) series, ordered by ts across files and runs, are differenced:

    earnings_t = balance_t - balance_prev      if balance_t >= balance_prev
    earnings_t = balance_t                     if balance_t <  balance_prev  (payout/reset: the balance
                                               restarted from 0, so what it shows now was earned since
                                               the reset; never negative earnings)

The first poll of a series is its baseline and produces no earnings row. The whole difference is booked
on the poll's hour (a gap is not spread). A late poll re-derives the poll after it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def derive_hourly_earnings(series: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Difference stored balance polls into hourly earnings.

    ``series``: every stored poll of the affected series, ordered by (device, protocol, ts), with
    ``balance_usd``, the measurement columns, ``since`` (earliest poll of the series in this batch) and
    ``file_index`` (-1 for a poll stored by an earlier batch). Returns the earnings rows from ``since``
    on (``value`` instead of ``balance_usd``, rounded to 1e-10 USD) and how many polls of this batch are
    the baseline of their series.
    """
    if series.empty:
        return series.rename(columns={"balance_usd": "value"}).drop(columns=["since"], errors="ignore"), 0
    balance = series["balance_usd"].to_numpy(float)
    previous = series.groupby(["device", "protocol"], sort=False)["balance_usd"].shift().to_numpy(float)
    earnings = np.round(np.where(balance >= previous, balance - previous, balance), 10)
    has_previous = ~np.isnan(previous)
    baselines = int(np.count_nonzero(~has_previous & (series["file_index"].to_numpy() >= 0)))
    keep = has_previous & (series["ts"] >= series["since"]).to_numpy()
    derived = series.loc[keep].drop(columns=["balance_usd", "since"]).assign(value=earnings[keep])
    return derived.reset_index(drop=True), baselines

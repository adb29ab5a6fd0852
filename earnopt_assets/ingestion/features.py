"""Feature engineering for hourly earnings telemetry. Plain numpy/pandas; no Dagster.

Every function works on one series, i.e. one (device, protocol), laid on a contiguous hourly grid
where a missing hour is ``NaN``. The same functions build the ``earnings_features`` table and feed the
predictor's recursive forecast, so training and serving cannot drift apart.

Notation: ``e_t`` is ``earnings_usd`` in hour ``t``; windows include the current hour.

==========================  ===================================================================
feature                     formula
==========================  ===================================================================
earnings_usd                e_t
lag_1, lag_2, lag_24        e_{t-1}, e_{t-2}, e_{t-24}
lag_168                     e_{t-168} (same hour last week)
ma_1h, ma_6h, ma_24h        (1/w) * sum_{i=0}^{w-1} e_{t-i}, w in {1, 6, 24}
ema_12                      m_t = a*e_t + (1-a)*m_{t-1}, a = 2/(12+1), m_0 = e_0 (missing hours skipped)
roc_1                       (e_t - e_{t-1}) / ((|e_t| + |e_{t-1}|)/2 + 1e-9), bounded in [-2, 2]
volatility_24h              population std of e_{t-23..t}
hour, day_of_week, day_of_month   local calendar of the host's timezone (hour 0-23, Monday = 0, 1-31)
hour_sin, hour_cos          sin/cos(2*pi*hour/24)
dow_sin, dow_cos            sin/cos(2*pi*day_of_week/7)
dom_sin, dom_cos            sin/cos(2*pi*(day_of_month-1)/days_in_month)
cpu_util, memory_util,      used_r / host_total_r for r in cpu, memory, bandwidth, storage
bandwidth_util, storage_util
allocation                  allocation share in [0, 1] as reported
failure_rate_24h            (1/24) * sum_{i=0}^{23} connection_failures_{t-i}   (failures per hour)
==========================  ===================================================================

A row is kept in the feature table only if it was observed and every feature is finite, so the first
168 hours of each series (lag_168's warm-up) and hours whose windows touch a gap are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

KEY_COLUMNS: tuple[str, ...] = ("device", "protocol", "ts")

EARNINGS_FEATURES: tuple[str, ...] = (
    "earnings_usd",
    "lag_1",
    "lag_2",
    "lag_24",
    "lag_168",
    "ma_1h",
    "ma_6h",
    "ma_24h",
    "ema_12",
    "roc_1",
    "volatility_24h",
)
CALENDAR_FEATURES: tuple[str, ...] = (
    "hour",
    "day_of_week",
    "day_of_month",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "dom_sin",
    "dom_cos",
)
RESOURCE_FEATURES: tuple[str, ...] = ("cpu_util", "memory_util", "bandwidth_util", "storage_util", "allocation")
HEALTH_FEATURES: tuple[str, ...] = ("failure_rate_24h",)

FEATURE_COLUMNS: tuple[str, ...] = EARNINGS_FEATURES + CALENDAR_FEATURES + RESOURCE_FEATURES + HEALTH_FEATURES

# Carried beside the features when the raw telemetry has it (``read_telemetry``'s ``imputed``): the hour's
# earnings were spread over a collector gap, not measured. Not a feature (values unchanged); training
# excludes such hours from its targets and scoring.
IMPUTED_COLUMN = "imputed"

# Hours of history a row needs before all its features exist.
WARMUP_HOURS = 168

EMA_SPAN = 12
ROC_EPS = 1e-9

RESOURCE_TOTAL_KEYS = {
    "cpu_util": ("cpu_cores", "cpu_cores"),
    "memory_util": ("memory_gb", "memory_gb"),
    "bandwidth_util": ("bandwidth_mbps", "bandwidth_mbps"),
    "storage_util": ("storage_gb", "storage_gb"),
}


class FeatureValidationError(ValueError):
    """Feature data that must not reach a model: names the column and what is wrong."""


# ----------------------------------------------------------------------------- window primitives


def lag(x: np.ndarray, k: int) -> np.ndarray:
    """x_{t-k}; NaN for the first k hours."""
    out = np.full(x.shape, np.nan, dtype=float)
    if k < len(x):
        out[k:] = x[: len(x) - k]
    return out


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` hours; NaN until the window is full or if it holds a NaN."""
    x = np.asarray(x, dtype=float)
    out = np.full(x.shape, np.nan)
    if len(x) < window:
        return out
    missing = np.isnan(x)
    filled = np.where(missing, 0.0, x)
    csum = np.concatenate(([0.0], np.cumsum(filled)))
    cmiss = np.concatenate(([0], np.cumsum(missing)))
    sums = csum[window:] - csum[:-window]
    holes = cmiss[window:] - cmiss[:-window]
    out[window - 1 :] = np.where(holes > 0, np.nan, sums / window)
    return out


def rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing population std, sqrt(E[x^2] - E[x]^2) over ``window`` hours."""
    x = np.asarray(x, dtype=float)
    mean = rolling_mean(x, window)
    mean_sq = rolling_mean(x * x, window)
    return np.sqrt(np.clip(mean_sq - mean * mean, 0.0, None))


def ema(x: np.ndarray, span: int = EMA_SPAN) -> np.ndarray:
    """Exponential moving average m_t = a*x_t + (1-a)*m_{t-1}, a = 2/(span+1); missing hours keep m."""
    from scipy.signal import lfilter

    x = np.asarray(x, dtype=float)
    out = np.full(x.shape, np.nan)
    if len(x) == 0:
        return out
    missing = np.isnan(x)
    if missing.all():
        return out
    # Forward-fill so a gap holds the average (a missing hour carries no news), then blank the gap itself.
    filled = pd.Series(x).ffill().bfill().to_numpy()
    alpha = 2.0 / (span + 1.0)
    smoothed, _ = lfilter([alpha], [1.0, alpha - 1.0], filled, zi=[(1.0 - alpha) * filled[0]])
    out[:] = smoothed
    out[missing] = np.nan
    return out


def rate_of_change(x: np.ndarray) -> np.ndarray:
    """Symmetric one-hour change (e_t - e_{t-1}) / ((|e_t| + |e_{t-1}|)/2 + eps), in [-2, 2]."""
    x = np.asarray(x, dtype=float)
    prev = lag(x, 1)
    return (x - prev) / ((np.abs(x) + np.abs(prev)) / 2.0 + ROC_EPS)


# ----------------------------------------------------------------------------- feature families


def earnings_features(earnings: np.ndarray) -> dict[str, np.ndarray]:
    """Lags, moving averages, EMA, rate of change and volatility of hourly earnings."""
    e = np.asarray(earnings, dtype=float)
    return {
        "earnings_usd": e.copy(),
        "lag_1": lag(e, 1),
        "lag_2": lag(e, 2),
        "lag_24": lag(e, 24),
        "lag_168": lag(e, 168),
        "ma_1h": rolling_mean(e, 1),
        "ma_6h": rolling_mean(e, 6),
        "ma_24h": rolling_mean(e, 24),
        "ema_12": ema(e),
        "roc_1": rate_of_change(e),
        "volatility_24h": rolling_std(e, 24),
    }


def calendar_features(ts: np.ndarray | pd.DatetimeIndex | pd.Series, timezone: str = "UTC") -> dict[str, np.ndarray]:
    """Local-time calendar with cyclic encodings. ``ts`` are UTC hours (naive means UTC)."""
    index = pd.DatetimeIndex(ts)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    local = index.tz_convert(timezone)
    hour = local.hour.to_numpy(dtype=float)
    dow = local.dayofweek.to_numpy(dtype=float)
    dom = local.day.to_numpy(dtype=float)
    days_in_month = local.days_in_month.to_numpy(dtype=float)
    two_pi = 2.0 * np.pi
    return {
        "hour": hour,
        "day_of_week": dow,
        "day_of_month": dom,
        "hour_sin": np.sin(two_pi * hour / 24.0),
        "hour_cos": np.cos(two_pi * hour / 24.0),
        "dow_sin": np.sin(two_pi * dow / 7.0),
        "dow_cos": np.cos(two_pi * dow / 7.0),
        "dom_sin": np.sin(two_pi * (dom - 1.0) / days_in_month),
        "dom_cos": np.cos(two_pi * (dom - 1.0) / days_in_month),
    }


def resource_features(usage: Mapping[str, np.ndarray], allocation: np.ndarray, host_totals: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Resource use as a share of the host's totals, plus the allocation share itself."""
    out: dict[str, np.ndarray] = {}
    for feature, (usage_key, total_key) in RESOURCE_TOTAL_KEYS.items():
        out[feature] = np.asarray(usage[usage_key], dtype=float) / float(host_totals[total_key])
    out["allocation"] = np.asarray(allocation, dtype=float)
    return out


def health_features(connection_failures: np.ndarray) -> dict[str, np.ndarray]:
    """Mean connection failures per hour over the trailing 24 hours."""
    return {"failure_rate_24h": rolling_mean(np.asarray(connection_failures, dtype=float), 24)}


def series_features(frame: pd.DataFrame, host_totals: Mapping[str, float], timezone: str = "UTC") -> pd.DataFrame:
    """All features for one series on a contiguous hourly grid.

    ``frame`` has a ``ts`` column (consecutive hours) and the telemetry columns; missing hours are NaN.
    Returns a frame with ``ts`` and every column of :data:`FEATURE_COLUMNS`, NaN where a feature does not
    exist yet.
    """
    ts = pd.DatetimeIndex(frame["ts"])
    if len(ts) > 1 and not _hourly(ts):
        raise FeatureValidationError("series_features needs a contiguous hourly grid; reindex first")
    columns: dict[str, np.ndarray] = {}
    columns.update(earnings_features(frame["earnings_usd"].to_numpy(dtype=float)))
    columns.update(calendar_features(ts, timezone))
    usage = {key: frame[key].to_numpy(dtype=float) for key, _ in RESOURCE_TOTAL_KEYS.values()}
    columns.update(resource_features(usage, frame["allocation"].to_numpy(dtype=float), host_totals))
    columns.update(health_features(frame["connection_failures"].to_numpy(dtype=float)))
    out = pd.DataFrame(columns, index=frame.index)
    out.insert(0, "ts", frame["ts"].to_numpy())
    return out


def _hourly(ts: pd.DatetimeIndex) -> bool:
    return bool((ts[1:] - ts[:-1] == pd.Timedelta(hours=1)).all())


def to_hourly_grid(series: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Reindex one series to every hour between its first and last ``ts``.

    Returns the gridded frame and a boolean mask of the hours that were actually observed.
    """
    series = series.sort_values("ts")
    ts = pd.DatetimeIndex(series["ts"]).as_unit("ns")
    grid = pd.date_range(ts[0], ts[-1], freq="h", unit="ns") if len(ts) else pd.DatetimeIndex([], dtype="datetime64[ns]")
    gridded = series.set_index(ts).drop(columns=["ts"]).reindex(grid)
    gridded.index.name = "ts"
    gridded = gridded.reset_index()
    observed = grid.isin(ts)
    return gridded, np.asarray(observed)


@dataclass
class FeatureBuildStats:
    series: int = 0
    input_rows: int = 0
    output_rows: int = 0
    warmup_or_gap_rows: int = 0
    missing_hours: int = 0


def _series_matrix(values: np.ndarray, series_index: np.ndarray, position: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Scatter one column into a (series, hour) matrix; hours that were not observed are NaN."""
    out = np.full(shape, np.nan)
    out[series_index, position] = values
    return out


def _ema_rows(x: np.ndarray, span: int = EMA_SPAN) -> np.ndarray:
    """:func:`ema` applied to every row of ``x`` at once (same forward/back fill and initial state)."""
    from scipy.signal import lfilter

    out = np.full(x.shape, np.nan)
    if x.size == 0:
        return out
    missing = np.isnan(x)
    filled = pd.DataFrame(x).ffill(axis=1).bfill(axis=1).to_numpy()
    alpha = 2.0 / (span + 1.0)
    zi = ((1.0 - alpha) * filled[:, :1]).reshape(-1, 1)
    smoothed, _ = lfilter([alpha], [1.0, alpha - 1.0], filled, axis=1, zi=zi)
    out[:] = smoothed
    out[missing] = np.nan
    return out


def _lag_rows(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full(x.shape, np.nan)
    if k < x.shape[1]:
        out[:, k:] = x[:, : x.shape[1] - k]
    return out


def _rolling_mean_rows(x: np.ndarray, window: int) -> np.ndarray:
    """:func:`rolling_mean` along axis 1 (same cumulative-sum arithmetic, so the same numbers)."""
    out = np.full(x.shape, np.nan)
    if x.shape[1] < window:
        return out
    missing = np.isnan(x)
    filled = np.where(missing, 0.0, x)
    zeros = np.zeros((x.shape[0], 1))
    csum = np.concatenate((zeros, np.cumsum(filled, axis=1)), axis=1)
    cmiss = np.concatenate((zeros.astype(int), np.cumsum(missing, axis=1)), axis=1)
    sums = csum[:, window:] - csum[:, :-window]
    holes = cmiss[:, window:] - cmiss[:, :-window]
    out[:, window - 1 :] = np.where(holes > 0, np.nan, sums / window)
    return out


def build_feature_table(raw: pd.DataFrame, host_totals: Mapping[str, float], timezone: str = "UTC") -> tuple[pd.DataFrame, FeatureBuildStats]:
    """Feature rows keyed by (device, protocol, ts) for every series in ``raw`` telemetry.

    Rows lacking history (warm-up, gaps) are dropped and counted, never filled with invented values.
    Vectorised over all series at once: each series is laid on its own row of a (series x hour) matrix
    and the window primitives run along the hour axis, giving the same values as calling
    :func:`series_features` per series (:func:`build_feature_table_reference`, checked by the tests).
    """
    stats = FeatureBuildStats(input_rows=len(raw))
    if len(raw) == 0:
        return build_feature_table_reference(raw, host_totals, timezone)
    # Integer codes instead of strings: sorting and series boundaries stay in fast numpy.
    device_codes, device_names = pd.factorize(raw["device"].astype(str), sort=True)
    protocol_codes, protocol_names = pd.factorize(raw["protocol"].astype(str), sort=True)
    ts = pd.DatetimeIndex(raw["ts"]).as_unit("us")
    if ts.tz is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    micros = ts.asi8
    if (micros % 3_600_000_000 != 0).any():
        raise FeatureValidationError("build_feature_table needs ts on whole hours")
    order = np.lexsort((micros, protocol_codes, device_codes))
    already_sorted = bool((order[1:] > order[:-1]).all())

    def column(values: np.ndarray) -> np.ndarray:
        return values if already_sorted else values[order]

    device_codes, protocol_codes, micros = column(device_codes), column(protocol_codes), column(micros)
    hours = micros // 3_600_000_000
    new_series = np.ones(len(hours), dtype=bool)
    new_series[1:] = (device_codes[1:] != device_codes[:-1]) | (protocol_codes[1:] != protocol_codes[:-1])
    series_index = np.cumsum(new_series) - 1
    starts = np.flatnonzero(new_series)
    position = hours - hours[starts][series_index]
    if (np.diff(position)[~new_series[1:]] <= 0).any():
        raise FeatureValidationError("duplicate (device, protocol, ts) rows in the input")
    n_series = len(starts)
    ends = np.append(starts[1:], len(hours))
    grid_len = position[ends - 1] + 1
    shape = (n_series, int(grid_len.max()))
    stats.series = n_series
    stats.missing_hours = int((grid_len - (ends - starts)).sum())

    def values(name: str) -> np.ndarray:
        return column(raw[name].to_numpy(dtype=float))

    earnings = values("earnings_usd")
    e = _series_matrix(earnings, series_index, position, shape)
    prev = _lag_rows(e, 1)
    mean_24 = _rolling_mean_rows(e, 24)
    grid_columns = {
        "lag_1": prev,
        "lag_2": _lag_rows(e, 2),
        "lag_24": _lag_rows(e, 24),
        "lag_168": _lag_rows(e, 168),
        "ma_1h": _rolling_mean_rows(e, 1),
        "ma_6h": _rolling_mean_rows(e, 6),
        "ma_24h": mean_24,
        "ema_12": _ema_rows(e),
        "roc_1": (e - prev) / ((np.abs(e) + np.abs(prev)) / 2.0 + ROC_EPS),
        "volatility_24h": np.sqrt(np.clip(_rolling_mean_rows(e * e, 24) - mean_24 * mean_24, 0.0, None)),
        "failure_rate_24h": _rolling_mean_rows(_series_matrix(values("connection_failures"), series_index, position, shape), 24),
    }
    # Back to one value per observed row (in (device, protocol, ts) order).
    columns: dict[str, np.ndarray] = {"earnings_usd": earnings}
    for name, grid in grid_columns.items():
        columns[name] = grid[series_index, position]
    del grid_columns, e, prev, mean_24
    usage = {key: values(key) for key, _ in RESOURCE_TOTAL_KEYS.values()}
    columns.update(resource_features(usage, values("allocation"), host_totals))
    keep = np.ones(len(hours), dtype=bool)
    for array in columns.values():
        keep &= np.isfinite(array)
    stats.warmup_or_gap_rows = int(len(hours) - keep.sum())
    kept_ts = micros[keep].astype("datetime64[us]")
    matrix = np.empty((int(keep.sum()), len(FEATURE_COLUMNS)), order="F")
    calendar = calendar_features(pd.DatetimeIndex(kept_ts), timezone)
    for j, name in enumerate(FEATURE_COLUMNS):
        matrix[:, j] = calendar[name] if name in calendar else columns[name][keep]
    # One float block, no per-column copies; keys in front.
    table = pd.DataFrame(matrix, columns=list(FEATURE_COLUMNS), copy=False)
    table.insert(0, "ts", kept_ts)
    table.insert(0, "protocol", pd.array(np.asarray(protocol_names, dtype=object)[protocol_codes[keep]], dtype=str))
    table.insert(0, "device", pd.array(np.asarray(device_names, dtype=object)[device_codes[keep]], dtype=str))
    if IMPUTED_COLUMN in raw.columns:
        table[IMPUTED_COLUMN] = column(raw[IMPUTED_COLUMN].fillna(False).to_numpy(dtype=bool))[keep]
    stats.output_rows = len(table)
    return table, stats


def build_feature_table_reference(raw: pd.DataFrame, host_totals: Mapping[str, float], timezone: str = "UTC") -> tuple[pd.DataFrame, FeatureBuildStats]:
    """Series-by-series reference of :func:`build_feature_table` (one :func:`series_features` call per
    series). Slow; kept as the executable specification the vectorised builder is tested against."""
    stats = FeatureBuildStats(input_rows=len(raw))
    parts: list[pd.DataFrame] = []
    needed = ["ts", "earnings_usd", *[k for k, _ in RESOURCE_TOTAL_KEYS.values()], "allocation", "connection_failures"]
    for (device, protocol), series in raw.groupby(["device", "protocol"], sort=True):
        stats.series += 1
        gridded, observed = to_hourly_grid(series[needed])
        stats.missing_hours += int((~observed).sum())
        feats = series_features(gridded, host_totals, timezone)
        values = feats[list(FEATURE_COLUMNS)].to_numpy(dtype=float)
        keep = observed & np.isfinite(values).all(axis=1)
        kept = feats.loc[keep]
        kept.insert(0, "protocol", protocol)
        kept.insert(0, "device", device)
        parts.append(kept)
        stats.warmup_or_gap_rows += int(observed.sum() - keep.sum())
    if parts:
        table = pd.concat(parts, ignore_index=True)
    else:
        table = pd.DataFrame(columns=[*KEY_COLUMNS, *FEATURE_COLUMNS])
    table["ts"] = pd.to_datetime(table["ts"]).astype("datetime64[us]")
    for column in FEATURE_COLUMNS:
        table[column] = table[column].astype("float64")
    table["device"] = table["device"].astype(str)
    table["protocol"] = table["protocol"].astype(str)
    if IMPUTED_COLUMN in raw.columns:
        flags = raw[[*KEY_COLUMNS, IMPUTED_COLUMN]].astype({"device": str, "protocol": str})
        flags["ts"] = pd.to_datetime(flags["ts"]).astype("datetime64[us]")
        table = table.merge(flags, on=list(KEY_COLUMNS), how="left")
        table[IMPUTED_COLUMN] = table[IMPUTED_COLUMN].fillna(False).astype(bool)
    stats.output_rows = len(table)
    return table, stats


# ----------------------------------------------------------------------------- validation

# Closed ranges that every feature must respect. None means unbounded on that side.
FEATURE_RANGES: dict[str, tuple[float | None, float | None]] = {
    **dict.fromkeys(("earnings_usd", "lag_1", "lag_2", "lag_24", "lag_168", "ma_1h", "ma_6h", "ma_24h", "ema_12", "volatility_24h"), (0.0, None)),
    "roc_1": (-2.0, 2.0),
    "hour": (0, 23),
    "day_of_week": (0, 6),
    "day_of_month": (1, 31),
    **dict.fromkeys(("hour_sin", "hour_cos", "dow_sin", "dow_cos", "dom_sin", "dom_cos"), (-1.0, 1.0)),
    **dict.fromkeys(("cpu_util", "memory_util", "bandwidth_util", "storage_util"), (0.0, None)),
    "allocation": (0.0, 1.0),
    "failure_rate_24h": (0.0, None),
}


def validate_features(table: pd.DataFrame, columns: tuple[str, ...] | list[str] = FEATURE_COLUMNS) -> None:
    """Raise :class:`FeatureValidationError` naming the column on a missing column, wrong dtype,
    NaN/Inf, or a value out of its range. Range checks allow 1e-9 of float slack."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise FeatureValidationError(f"missing feature columns: {', '.join(missing)}")
    for column in columns:
        series = table[column]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            raise FeatureValidationError(f"feature {column!r} has dtype {series.dtype}, expected a float")
        values = series.to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            first = int(np.argmax(bad))
            raise FeatureValidationError(
                f"feature {column!r} has {int(bad.sum())} NaN/Inf values (first at row {first})"
            )
        low, high = FEATURE_RANGES.get(column, (None, None))
        if low is not None and (values < low - 1e-9).any():
            first = int(np.argmax(values < low - 1e-9))
            raise FeatureValidationError(f"feature {column!r} below {low} at row {first}: {values[first]}")
        if high is not None and (values > high + 1e-9).any():
            first = int(np.argmax(values > high + 1e-9))
            raise FeatureValidationError(f"feature {column!r} above {high} at row {first}: {values[first]}")


# ----------------------------------------------------------------------------- scaling helpers (JSON-safe)


def log1p_money(x: np.ndarray) -> np.ndarray:
    """log(1 + x) for skewed, non-negative money columns."""
    x = np.asarray(x, dtype=float)
    if (x < 0).any():
        raise FeatureValidationError("log1p_money needs non-negative values")
    return np.log1p(x)


def expm1_money(y: np.ndarray) -> np.ndarray:
    """Inverse of :func:`log1p_money`."""
    return np.expm1(np.asarray(y, dtype=float))


def scaler_to_json(scaler) -> dict:
    """Serialize a fitted sklearn StandardScaler or MinMaxScaler to plain JSON types."""
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    if isinstance(scaler, StandardScaler):
        return {
            "type": "standard",
            "mean": scaler.mean_.tolist(),
            "scale": scaler.scale_.tolist(),
            "var": scaler.var_.tolist(),
            "n_samples_seen": int(np.asarray(scaler.n_samples_seen_).max()),
        }
    if isinstance(scaler, MinMaxScaler):
        return {
            "type": "minmax",
            "feature_range": list(scaler.feature_range),
            "data_min": scaler.data_min_.tolist(),
            "data_max": scaler.data_max_.tolist(),
            "min": scaler.min_.tolist(),
            "scale": scaler.scale_.tolist(),
            "n_samples_seen": int(np.asarray(scaler.n_samples_seen_).max()),
        }
    raise TypeError(f"unsupported scaler {type(scaler).__name__}")


def scaler_from_json(data: Mapping) -> object:
    """Rebuild a fitted scaler from :func:`scaler_to_json` output, validating its shape."""
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    kind = data.get("type")
    if kind == "standard":
        mean = np.asarray(data["mean"], dtype=float)
        scale = np.asarray(data["scale"], dtype=float)
        if mean.shape != scale.shape or not np.isfinite(mean).all() or not (scale > 0).all():
            raise ValueError("corrupt standard scaler parameters")
        scaler = StandardScaler()
        scaler.mean_, scaler.scale_ = mean, scale
        scaler.var_ = np.asarray(data.get("var", scale**2), dtype=float)
        scaler.n_features_in_ = mean.shape[0]
        scaler.n_samples_seen_ = int(data.get("n_samples_seen", 1))
        return scaler
    if kind == "minmax":
        scaler = MinMaxScaler(feature_range=tuple(data["feature_range"]))
        scaler.data_min_ = np.asarray(data["data_min"], dtype=float)
        scaler.data_max_ = np.asarray(data["data_max"], dtype=float)
        scaler.data_range_ = scaler.data_max_ - scaler.data_min_
        scaler.min_ = np.asarray(data["min"], dtype=float)
        scaler.scale_ = np.asarray(data["scale"], dtype=float)
        scaler.n_features_in_ = scaler.min_.shape[0]
        scaler.n_samples_seen_ = int(data.get("n_samples_seen", 1))
        return scaler
    raise ValueError(f"unknown scaler type {kind!r}")

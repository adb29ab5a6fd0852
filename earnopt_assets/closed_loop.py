"""Policies replayed against :class:`earnopt_assets.environment.HostEnvironment` (``benchmarks/policy.py``).

Every policy sees the same world (same seed): ``history_days`` of the environment's own random allocation
path, then ``loop_days`` in which the policy sets the share of every protocol each hour.

* :func:`static_policy` - one allocation held for the whole loop (the catalog's initial shares, or
  :func:`equal_shares`, what money4band / income-generator do: every app gets the same limits).
* :class:`EarnoptLoop` - earnopt's own loop at hourly resolution on the domain functions the Dagster
  assets call: ingest the hour's telemetry; once a day re-score the forecast candidates on the recent
  rolling-origin holdout, pick the served source with the serving rule
  (:func:`earnopt_assets.forecasting.registry.choose_source`) and fit its split-conformal intervals; each
  hour forecast the next 24 h with the served candidate, evaluate the alert rules (a critical degrading
  alert in the last ``resolve_after_hours`` caps the protocol, as ``protocol_state`` does), assemble the
  cycle's inputs and plan (:func:`earnopt_assets.allocation.plan.assemble_inputs`,
  :func:`~earnopt_assets.allocation.plan.compute_plan`: optimiser, checks, reallocation rule with restart
  cost and risk setting) and apply the plan's targets in the next hour.
  Forecaster: the allocation-aware statistical candidates only (seasonal naive 24/168 h), their lags
  re-expressed at the share in force with the response the last cycle learned (:meth:`EarnoptLoop._at_share_in_force`),
  not the LSTM, and not MSTL/ETS (each costs ~0.3 s per origin; 12 protocols x 30 days x 3 seeds x several
  policies does not fit 2 shared cores). The alert rules adjust earnings by the same learned response.
* :func:`oracle_allocation` - knows the hidden response curves, demand and prices of the loop window and
  holds the best fixed allocation for it (a mixed-integer program over a 0.01 share grid, exact for the
  step-shaped curves); it does not move hour by hour, so an adaptive policy may exceed it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from earnopt_assets.allocation.plan import MIN_OBSERVED_ALLOCATION
from earnopt_assets.catalog import Catalog
from earnopt_assets.environment import HostEnvironment, oracle_view

RESOURCE_KEYS = ("cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb")
# Only the allocation-aware candidates: a forecast that ignores the share keeps predicting yesterday's
# earnings at yesterday's share for a day after every move, and the allocator then undoes its own plan.
FORECAST_CANDIDATES = ("seasonal_naive_24_alloc", "seasonal_naive_168_alloc")
FORECAST_HISTORY_HOURS = 8 * 24  # the seasonal-naive lags reach 168 h back
TRAIN_WINDOW_HOURS = 28 * 24
HOLDOUT_HOURS = 7 * 24
ALERT_WINDOW_HOURS = 7 * 24 + 24  # the rules' trailing week before the evaluated hours
KEEP_DAYS = 60  # telemetry the loop keeps: the allocation cycle learns its curves from the last 56 days


@dataclass
class PolicyOutcome:
    """What one policy earned in the loop window of one seed."""

    policy: str
    seed: int
    total_usd: float
    restarts: int
    downtime_hours: float
    wall_seconds: float
    hourly_usd: np.ndarray = field(repr=False)
    notes: list[str] = field(default_factory=list)


def make_environment(catalog: Catalog, seed: int, history_days: int, loop_days: int, end: str) -> tuple[HostEnvironment, pd.DataFrame]:
    """A hidden-response environment that has already run ``history_days`` of its random allocation path."""
    env = HostEnvironment(catalog, hours=(history_days + loop_days) * 24, seed=seed, end=end, response="hidden")
    history = env.run(env.random_allocation[: history_days * 24])
    return env, history


def fits(shares: Mapping[str, float], catalog: Catalog) -> bool:
    totals = catalog.host.available()
    specs = {s.name: s for s in catalog.enabled}
    return all(sum(shares[n] * specs[n].resource_vector()[r] for n in shares) <= totals[r] + 1e-9 for r in RESOURCE_KEYS)


def equal_shares(catalog: Catalog) -> dict[str, float]:
    """Every enabled protocol at the same share s (clipped to its [min, max]), s as large as the host allows."""
    low, high = 0.0, 1.0

    def at(s: float) -> dict[str, float]:
        return {p.name: float(np.clip(s, p.min_allocation, p.max_allocation)) for p in catalog.enabled}

    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if fits(at(mid), catalog) else (low, mid)
    return at(low)


def _loop_window(env: HostEnvironment) -> slice:
    return slice(env.hour, env.hours)


def static_policy(name: str, env: HostEnvironment, shares: Mapping[str, float], seed: int) -> PolicyOutcome:
    started, first = time.perf_counter(), env.hour
    row = np.array([shares[n] for n in env.names])
    frame = env.run(np.tile(row, (env.hours - env.hour, 1)))
    hourly = frame.groupby("ts")["earnings_usd"].sum().to_numpy()
    return PolicyOutcome(name, seed, float(hourly.sum()), env.restarts(first), env.downtime_hours(first), time.perf_counter() - started, hourly)


def oracle_allocation(env: HostEnvironment, catalog: Catalog, grid_step: float = 0.01) -> dict[str, float]:
    """Best fixed allocation for the loop window knowing the true curves, demand, prices, outages.

    max sum_p E_p(a_p) s.t. sum_p a_p R_pr <= T_r, a_p in grid within [min_p, max_p], with
    E_p(a) = base_p * sum_t response_p(a, demand_t) * price_t * outage/anomaly factor_t (noise has mean 1);
    solved as a MILP with one binary per (protocol, grid share) (scipy/HiGHS).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    view = oracle_view(env)
    window = _loop_window(env)
    totals = catalog.host.available()
    columns, values, owners = [], [], []
    for j, name in enumerate(env.names):
        item = view[name]
        spec, response = item["spec"], item["response"]
        grid = np.round(np.arange(spec.min_allocation, spec.max_allocation + 1e-9, grid_step), 6)
        demand, price, factor = item["demand"][window], item["price"][window], item["factor"][window]
        for share in grid:
            earned = spec.simulation.base_hourly_usd * float(np.sum(response.factor(np.full(len(demand), share), demand) * price * factor))
            columns.append((name, float(share)))
            values.append(earned)
            owners.append(j)
    values_arr, owners_arr = np.array(values), np.array(owners)
    specs = {s.name: s for s in catalog.enabled}
    rows, upper = [], []
    for r in RESOURCE_KEYS:
        rows.append([share * specs[name].resource_vector()[r] for name, share in columns])
        upper.append(totals[r])
    pick_one = np.zeros((len(env.names), len(columns)))
    pick_one[owners_arr, np.arange(len(columns))] = 1.0
    constraints = [LinearConstraint(np.array(rows), -np.inf, np.array(upper)), LinearConstraint(pick_one, 1.0, 1.0)]
    result = milp(-values_arr, constraints=constraints, integrality=np.ones(len(columns)), bounds=Bounds(0, 1))
    if not result.success:
        raise RuntimeError(f"oracle MILP failed: {result.message}")
    chosen = np.flatnonzero(result.x > 0.5)
    return {columns[k][0]: columns[k][1] for k in chosen}


# ------------------------------------------------------------------------------------------ earnopt


@dataclass
class _Served:
    source: str
    forecaster: object
    intervals: object | None


class EarnoptLoop:
    """earnopt's hourly loop on the domain functions (module docstring). ``observe`` ingests telemetry,
    ``decide(now)`` returns the shares to run in the next hour and the plan that set them."""

    def __init__(self, catalog: Catalog, history: pd.DataFrame, *, risk_aversion: float | None = None,
                 use_forecasts: bool = True, use_alerts: bool = True):
        if risk_aversion is not None:
            catalog = catalog.model_copy(update={"allocation": catalog.allocation.model_copy(update={"risk_aversion": risk_aversion})})
        # Replays feed past hours: the wall-clock silent rule would call every series silent.
        catalog = catalog.model_copy(update={"alerts": catalog.alerts.model_copy(update={"silent_lag_hours": 0.0})})
        self.catalog = catalog
        self.use_forecasts, self.use_alerts = use_forecasts, use_alerts  # off: as a host with no forecast/alerts run yet
        self.names = list(catalog.enabled_names)
        self.telemetry = history.sort_values(["protocol", "ts"]).reset_index(drop=True)
        self.state: dict[str, dict] = {}
        self.served: dict[str, _Served] = {}
        self.last_retrain: pd.Timestamp | None = None
        self.plans: list = []
        self.forecaster_used: set[str] = set()
        self.timings = {"retrain": 0.0, "forecast": 0.0, "alerts": 0.0, "plan": 0.0}

    def observe(self, rows: pd.DataFrame) -> None:
        """Ingest: append the hour's telemetry (the store's job on a real host)."""
        self.telemetry = pd.concat([self.telemetry, rows], ignore_index=True)
        if len(self.telemetry) > KEEP_DAYS * 24 * len(self.names) * 1.2:  # keep the recent window only
            newest = self.telemetry["ts"].max()
            self.telemetry = self.telemetry[self.telemetry["ts"] > newest - pd.Timedelta(days=KEEP_DAYS)].reset_index(drop=True)

    def _series(self, since: pd.Timestamp) -> dict[str, pd.DataFrame]:
        recent = self.telemetry[self.telemetry["ts"] > since]
        return {str(n): g.sort_values("ts").reset_index(drop=True) for n, g in recent.groupby("protocol", sort=False)}

    def retrain(self, now: datetime) -> None:
        """Daily: score the candidates on the last week's rolling origins, serve the rule's choice with its intervals."""
        from earnopt_assets.forecasting.candidates import OriginContext, statistical_candidates
        from earnopt_assets.forecasting.harness import score_candidates
        from earnopt_assets.forecasting.intervals import ConformalIntervals
        from earnopt_assets.forecasting.registry import choose_source, score_row
        from earnopt_assets.numerics.response import fit_response_curve

        started = time.perf_counter()
        series = self._series(pd.Timestamp(now) - pd.Timedelta(hours=TRAIN_WINDOW_HOURS + 1))
        for name in self.names:
            frame = series.get(name)
            if frame is None or len(frame) < HOLDOUT_HOURS + 48:
                continue
            ctx = OriginContext.from_frame(frame)
            curve = fit_response_curve(ctx.allocation, ctx.earnings)
            candidates = statistical_candidates(allocation_beta=curve.beta)
            chosen = {k: candidates[k] for k in FORECAST_CANDIDATES if k in candidates}
            result = score_candidates(ctx.ts, ctx.earnings, ctx.allocation, len(ctx.ts) - HOLDOUT_HOURS, chosen, step=12)
            decision = choose_source(name, {k: score_row(s, len(result.origins)) for k, s in result.scores.items()})
            source = decision.source if decision.source in chosen else "seasonal_naive_24_alloc"
            score = result.scores[source]
            try:
                intervals = ConformalIntervals.fit(score.residuals, score.predictions)
            except ValueError:
                intervals = None
            self.served[name] = _Served(source, chosen[source], intervals)
        self.last_retrain = pd.Timestamp(now)
        self.timings["retrain"] += time.perf_counter() - started

    def _at_share_in_force(self, name: str, frame: pd.DataFrame) -> pd.DataFrame:
        """The lags re-expressed at the share in force a_0 with the curve the last cycle learned:
        e'_t = e_t r(a_0) / r(a_t), allocation a_0 (so the candidates' own x^beta rescaling is a no-op and the
        forecast and the allocator's potential p = f / r(a_0) use one curve). A lag at a share the curve pays
        nothing at (r < 0.02, as the allocator reads it) says nothing about a_0: it takes the mean of the others. Unchanged without a learned curve."""
        curve = self.plans[-1].inputs.protocols[name].curve if self.plans and name in self.plans[-1].inputs.protocols else None
        if curve is None or not curve.learned or frame.empty:
            return frame
        shares = frame["allocation"].to_numpy(float)
        held = float(shares[-1])
        lag_response, held_response = np.asarray(curve.at_share(shares), dtype=float), float(curve.at_share(held))
        earnings = frame["earnings_usd"].to_numpy(float)
        known = lag_response >= MIN_OBSERVED_ALLOCATION  # the allocator's threshold: below it r(a) pays nothing
        rescaled = np.where(known, earnings * held_response / np.where(known, lag_response, 1.0), np.nan)
        fill = float(np.nanmean(rescaled)) if known.any() else 0.0
        return frame.assign(earnings_usd=np.where(known, rescaled, fill), allocation=held)

    def forecasts(self, now: datetime, series: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """Each hour: the served candidate's next 24 h with its conformal intervals (forecasts-table columns)."""
        from earnopt_assets.forecasting.candidates import OriginContext

        started = time.perf_counter()
        out = {}
        for name, served in self.served.items():
            frame = series.get(name)
            if frame is None or len(frame) < 200:
                continue
            ctx = OriginContext.from_frame(self._at_share_in_force(name, frame.tail(FORECAST_HISTORY_HOURS)))
            values = np.clip(np.nan_to_num(np.asarray(served.forecaster(ctx), dtype=float)), 0.0, None)
            forecast = pd.DataFrame({"target_ts": pd.DatetimeIndex(ctx.target_ts), "value": values, "source": served.source,
                                     "forecast_time": pd.Timestamp(now), "origin_ts": pd.Timestamp(ctx.origin_ts)})
            if served.intervals is not None:
                for key, band in served.intervals.apply(values).items():
                    forecast[key] = band
            out[name] = forecast
            self.forecaster_used.add(served.source)
        self.timings["forecast"] += time.perf_counter() - started
        return out

    def degraded(self, now: datetime) -> dict[str, str]:
        """Anomaly caps: a critical degrading alert within resolve_after_hours (as protocol_state holds it)."""
        from earnopt_assets.anomaly.rules import DEGRADING_RULES, series_alerts
        from earnopt_assets.anomaly.series import iter_series

        started = time.perf_counter()
        settings = self.catalog.alerts
        recent = self.telemetry[self.telemetry["ts"] > pd.Timestamp(now) - pd.Timedelta(hours=ALERT_WINDOW_HOURS)]
        since = (pd.Timestamp(now) - pd.Timedelta(hours=settings.resolve_after_hours)).to_pydatetime()
        # Only the rules that can degrade a protocol decide the caps (the silent rule is off in a replay).
        rules = tuple(sorted(DEGRADING_RULES - {"silent"}))
        specs = {p.name: p for p in self.catalog.protocols}
        # Earnings are adjusted by the response the last cycle learned, not a^0.6: a planned share change is
        # then not an earnings drop (anomaly.series; a^0.6 read a cut or a saturated raise as one).
        responses = {n: p.curve.relative for n, p in self.plans[-1].inputs.protocols.items() if p.curve.learned} if self.plans else None
        alerts = [alert for ctx in iter_series(recent, specs, elasticity=settings.allocation_elasticity, level_band=settings.baseline_level_band,
                                               responses=responses)
                  for alert in series_alerts(ctx, settings, since, None, rules=rules)]
        out = {a.protocol: f"critical {a.rule} alert at {a.hour:%Y-%m-%d %H:00}" for a in alerts
               if a.rule in DEGRADING_RULES and a.severity == "critical"}
        self.timings["alerts"] += time.perf_counter() - started
        return out

    def decide(self, now: datetime):
        """One allocation cycle at ``now``; returns (shares for the next hour, plan)."""
        from earnopt_assets.allocation.plan import CURVE_WINDOW_DAYS, assemble_inputs, compute_plan

        now = pd.Timestamp(now).to_pydatetime()
        if self.use_forecasts and (self.last_retrain is None or pd.Timestamp(now) - self.last_retrain >= pd.Timedelta(hours=24)):
            self.retrain(now)
        newest = self.telemetry["ts"].max()  # the cycle reads the last 30 days before the newest row, as cycle.py does
        series = self._series(pd.Timestamp(newest) - pd.Timedelta(days=CURVE_WINDOW_DAYS) - pd.Timedelta(microseconds=1))
        forecasts = self.forecasts(now, series) if self.use_forecasts else {}
        degraded = self.degraded(now) if self.use_alerts else {}
        started = time.perf_counter()
        history = {n: g[["ts", "earnings_usd", "allocation"]] for n, g in series.items()}
        inputs = assemble_inputs(self.catalog, now, history=history, forecasts=forecasts, state=self.state, degraded=degraded)
        plan = compute_plan(inputs, self.catalog)
        if plan.applied:
            for name, item in plan.protocols.items():
                self.state[name] = {"allocation": item.target, "updated_at": now, "cycle_id": plan.cycle_id, "source": "optimizer"}
        self.timings["plan"] += time.perf_counter() - started
        self.plans.append(plan)
        return {n: float(np.clip(p.target, 0.0, 1.0)) for n, p in plan.protocols.items()}, plan


def earnopt_policy(name: str, env: HostEnvironment, catalog: Catalog, history: pd.DataFrame, seed: int,
                   risk_aversion: float | None = None) -> PolicyOutcome:
    """Run :class:`EarnoptLoop` hour by hour until the environment ends."""
    started, first = time.perf_counter(), env.hour
    loop = EarnoptLoop(catalog, history, risk_aversion=risk_aversion)
    hourly = []
    while not env.done:
        shares, _ = loop.decide(env.now.to_pydatetime())
        rows = env.step(shares)
        hourly.append(float(rows["earnings_usd"].sum()))
        loop.observe(rows)
    applied = sum(p.applied for p in loop.plans)
    notes = [f"forecasters served: {', '.join(sorted(loop.forecaster_used)) or 'none'}",
             f"plans applied: {applied} of {len(loop.plans)}",
             "seconds in retrain/forecast/alerts/plan: " + ", ".join(f"{v:.1f}" for v in loop.timings.values())]
    return PolicyOutcome(name, seed, float(np.sum(hourly)), env.restarts(first), env.downtime_hours(first),
                         time.perf_counter() - started, np.array(hourly), notes)

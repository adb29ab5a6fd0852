"""Simulator: deterministic for a seed, the landing contract, and the realism the other areas rely on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from earnopt_assets.catalog import UnknownProtocolError
from earnopt_assets.simulator import LABEL_COLUMNS, LABEL_TYPES, simulate, simulate_to_dir
from earnopt_assets.warehouse import TELEMETRY_COLUMNS

END = "2026-01-31T23:00:00"


@pytest.fixture(scope="module")
def sim90():
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets_tests.conftest import DEFAULT_CATALOG

    catalog = load_catalog(DEFAULT_CATALOG)
    return catalog, simulate(catalog, days=90, seed=7, end=END)


def test_deterministic_for_a_seed(small_catalog):
    a = simulate(small_catalog, days=20, seed=11, end=END)
    b = simulate(small_catalog, days=20, seed=11, end=END)
    c = simulate(small_catalog, days=20, seed=12, end=END)
    pd.testing.assert_frame_equal(a.telemetry, b.telemetry)
    pd.testing.assert_frame_equal(a.labels, b.labels)
    assert not a.telemetry["earnings_usd"].equals(c.telemetry["earnings_usd"])
    # A protocol's stream does not depend on which other protocols are simulated.
    only = simulate(small_catalog, days=20, seed=11, end=END, protocols=["storj"])
    pd.testing.assert_frame_equal(
        only.telemetry.reset_index(drop=True),
        a.telemetry.loc[a.telemetry["protocol"] == "storj"].reset_index(drop=True),
    )


def test_contract_columns_and_types(sim90):
    catalog, result = sim90
    tel = result.telemetry
    assert list(tel.columns) == list(TELEMETRY_COLUMNS)
    assert len(tel) == 90 * 24 * len(catalog.enabled)
    assert tel["ts"].max() == pd.Timestamp(END) and tel["ts"].dt.tz is None
    assert (tel["ts"].dt.minute == 0).all()
    assert set(tel["protocol"]) == set(catalog.enabled_names) and set(tel["device"]) == {catalog.host.device}
    assert tel["connection_failures"].dtype == np.int64 and (tel["connection_failures"] >= 0).all()
    assert (tel["earnings_usd"] >= 0).all() and tel["allocation"].between(0, 1).all()
    for column in ("cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb"):
        assert (tel[column] >= 0).all()
    assert not tel.duplicated(["device", "protocol", "ts"]).any()
    bandwidth = tel.loc[tel["protocol"] == "honeygain", "latency_ms"].dropna()
    assert 20 < bandwidth.median() < 200
    assert tel.loc[tel["protocol"] == "akash", "latency_ms"].isna().all()


def test_end_defaults_to_the_current_utc_hour(small_catalog):
    result = simulate(small_catalog, days=1, seed=1)
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("h")
    assert result.telemetry["ts"].max() in (now, now - pd.Timedelta(hours=1))
    with pytest.raises(ValueError):
        simulate(small_catalog, days=0)
    with pytest.raises(UnknownProtocolError):
        simulate(small_catalog, days=1, protocols=["nope"])


def _clean(catalog, result, protocol: str) -> pd.DataFrame:
    tel = result.telemetry.loc[result.telemetry["protocol"] == protocol].copy()
    labelled = result.labels.loc[result.labels["protocol"] == protocol, "ts"]
    tel = tel.loc[~tel["ts"].isin(labelled)]
    local = tel["ts"].dt.tz_localize("UTC").dt.tz_convert(catalog.host.timezone)
    tel["local_hour"], tel["local_dow"] = local.dt.hour, local.dt.dayofweek
    # remove allocation and price effects: earnings per unit of alloc^0.6
    tel["demand"] = tel["earnings_usd"] / tel["allocation"] ** 0.6
    return tel


def test_bandwidth_demand_peaks_late_evening_local_and_troughs_early_morning(sim90):
    catalog, result = sim90
    tel = _clean(catalog, result, "honeygain")
    by_hour = tel.groupby("local_hour")["demand"].median()
    assert by_hour.idxmax() in (20, 21, 22)
    assert by_hour.idxmin() in (4, 5, 6, 7)
    assert by_hour.max() / by_hour.min() > 2.0
    weekend = tel.loc[tel["local_dow"] >= 5, "demand"].median()
    weekday = tel.loc[tel["local_dow"] < 5, "demand"].median()
    assert weekend > weekday


def test_storage_is_flat_over_the_day_but_weekly(sim90):
    catalog, result = sim90
    tel = _clean(catalog, result, "storj")
    by_hour = tel.groupby("local_hour")["demand"].median()
    assert by_hour.max() / by_hour.min() < 1.4
    weekday = tel.loc[tel["local_dow"] < 5, "demand"].median()
    weekend = tel.loc[tel["local_dow"] >= 5, "demand"].median()
    assert weekday > weekend * 1.05


def test_compute_earns_from_many_concurrent_leases(sim90):
    """Compute earnings are a capacity-limited birth-death process of tenant leases: smooth hour to hour
    (many leases, most outliving an hour), more leases in local working hours, never above capacity."""
    catalog, result = sim90
    for protocol in ("akash", "golem"):
        tel = _clean(catalog, result, protocol).sort_values("ts").set_index("ts")
        level = tel["demand"].asfreq("h")
        hourly_change = np.log(level / level.shift(1)).dropna()
        hourly_change = hourly_change[np.abs(hourly_change) < 1]  # ignore allocation changes
        assert hourly_change.std() < 0.12  # no on/off lease blocks
        assert (tel["demand"] > 0).all()  # a node with dozens of tenants never sits fully idle
        by_hour = tel.groupby("local_hour")["demand"].median()
        assert by_hour.loc[12:18].mean() > by_hour.loc[2:6].mean() * 1.03
        activity = tel["cpu_cores"] / (tel["allocation"] * catalog.require(protocol).cpu_cores)
        assert activity.max() < 1.2 and activity.median() > 0.3  # occupancy <= slot capacity


def test_lease_occupancy_respects_capacity_and_evicts_on_cuts():
    from earnopt_assets.simulator import LEASE_SLOTS_AT_FULL_ALLOCATION, _lease_occupancy

    ts = pd.date_range(end=END, periods=24 * 30, freq="h")
    allocation = np.r_[np.full(24 * 15, 1.0), np.full(24 * 15, 0.25)]
    occupancy, capacity = _lease_occupancy(allocation, ts.hour.to_numpy(), ts.dayofweek.to_numpy(), np.random.default_rng(3))
    assert (occupancy <= capacity).all() and occupancy[: 24 * 15].mean() > 20
    quarter = round(LEASE_SLOTS_AT_FULL_ALLOCATION / 4)
    assert capacity[-1] == quarter and occupancy[24 * 15] <= quarter  # cut to a quarter: the newest tenants leave at once


def test_filecoin_earns_smooth_deal_income_with_rare_block_rewards(sim90):
    catalog, result = sim90
    tel = _clean(catalog, result, "filecoin").sort_values("ts").set_index("ts")
    level = tel["demand"].asfreq("h")
    change = np.log(level / level.shift(1)).dropna()
    assert np.median(np.abs(change)) < 0.03  # per-epoch deal payments: no hourly demand noise
    by_hour = tel.groupby("local_hour")["demand"].median()
    assert by_hour.max() / by_hour.min() < 1.1  # flat over the day


def test_earnings_have_diminishing_returns_in_allocation(sim90):
    catalog, result = sim90
    tel = _clean(catalog, result, "honeygain")
    daily = tel.assign(day=tel["ts"].dt.floor("D")).groupby("day").agg(alloc=("allocation", "mean"), earn=("earnings_usd", "mean"))
    slope = np.polyfit(np.log(daily["alloc"]), np.log(daily["earn"]), 1)[0]
    assert 0.2 < slope < 0.95  # concave in allocation (exponent 0.6 plus price drift)
    # allocation is piecewise constant: few changes, each lasting days
    changes = (result.telemetry.loc[result.telemetry["protocol"] == "honeygain", "allocation"].diff().fillna(0) != 0).sum()
    assert 10 <= changes <= 50


def test_noise_is_moderate(sim90):
    catalog, result = sim90
    tel = _clean(catalog, result, "honeygain")
    # relative residual against the same local hour on neighbouring days (price moves slowly)
    tel = tel.sort_values("ts").set_index("ts")
    ratio = np.log(tel["demand"] / tel["demand"].shift(24)).dropna()
    ratio = ratio[np.abs(ratio) < 1]  # ignore allocation changes
    assert 0.04 < ratio.std() < 0.2


def test_labels_and_injected_effects(sim90):
    catalog, result = sim90
    labels, tel = result.labels, result.telemetry
    assert list(labels.columns) == list(LABEL_COLUMNS)
    assert set(labels["anomaly_type"]) <= set(LABEL_TYPES)
    assert {"earnings_drop", "resource_spike", "failure_burst", "outage"} <= set(labels["anomaly_type"])
    events = labels.assign(gap=labels.groupby(["protocol", "anomaly_type"])["ts"].diff() != pd.Timedelta(hours=1))
    per_protocol = events.loc[events["anomaly_type"] != "outage"].groupby("protocol")["gap"].sum()
    assert per_protocol.between(2, 12).all() and len(per_protocol) == len(catalog.enabled)
    merged = labels.merge(tel, on=["device", "protocol", "ts"], how="left", validate="one_to_one")
    assert merged["earnings_usd"].notna().all()
    outage = merged.loc[merged["anomaly_type"] == "outage"]
    assert (outage["earnings_usd"] == 0).all() and (outage["connection_failures"] >= 10).mean() > 0.9
    bursts = merged.loc[merged["anomaly_type"] == "failure_burst"]
    assert (bursts["connection_failures"] >= bursts["magnitude"]).all()
    normal_failures = tel.loc[~tel.set_index(["protocol", "ts"]).index.isin(labels.set_index(["protocol", "ts"]).index), "connection_failures"]
    assert normal_failures.mean() < 0.5
    spikes = merged.loc[merged["anomaly_type"] == "resource_spike"]
    per_unit = spikes["protocol"].map({p.name: p.cpu_cores for p in catalog.protocols})
    assert (spikes["cpu_cores"] >= 2.9 * spikes["allocation"] * per_unit).all()
    normal = tel.loc[tel["protocol"] == "honeygain"]
    assert (normal["cpu_cores"] <= 1.5 * normal["allocation"] * 0.25).mean() > 0.99


def test_no_anomalies_when_disabled(small_catalog):
    result = simulate(small_catalog, days=30, seed=3, end=END, inject_anomalies=False)
    assert set(result.labels["anomaly_type"]) <= {"outage"}


@pytest.mark.parametrize("file_format", ["parquet", "csv", "jsonl"])
def test_simulate_to_dir_writes_landing_files_and_labels_outside(tmp_path, small_catalog, file_format):
    landing = tmp_path / "data" / "landing"
    summary = simulate_to_dir(small_catalog, days=3, seed=5, out_dir=landing, end=END, file_format=file_format)
    assert len(summary.files) == 3 and all(f.parent == landing and f.suffix == f".{file_format}" for f in summary.files)
    assert summary.labels_file == tmp_path / "data" / "labels" / "labels.parquet"
    assert not any(p.name.startswith(".") for p in landing.iterdir())  # no temp files left behind
    assert "simulated 216 hourly rows for 3 protocols" in str(summary)
    with pytest.raises(ValueError, match="must not be inside"):
        simulate_to_dir(small_catalog, days=1, seed=5, out_dir=landing, labels_dir=landing / "labels", end=END)
    with pytest.raises(ValueError, match="file_format"):
        simulate_to_dir(small_catalog, days=1, seed=5, out_dir=landing, end=END, file_format="xml")


def test_cli_simulate(tmp_path, small_catalog_path, capsys):
    from earnopt_assets.cli import main

    out = tmp_path / "landing"
    assert main(["simulate", "--days", "2", "--seed", "3", "--out", str(out), "--end", END, "--format", "csv"]) == 0
    assert len(list(out.glob("*.csv"))) == 3
    assert (tmp_path / "labels" / "labels.parquet").exists()
    assert "simulated 144 hourly rows" in capsys.readouterr().out


def test_block_rewards_pay_a_quarter_at_once_and_vest_the_rest_over_180_days():
    from earnopt_assets.simulator import BLOCK_REWARD_HOURS, BLOCK_REWARD_VESTING_HOURS, _block_rewards

    n = BLOCK_REWARD_VESTING_HOURS + 500
    income = np.full(n, 0.01)
    rewards = _block_rewards(income, np.full(n, 1.0), np.random.default_rng(5))
    paid_at_once = rewards > 0.25 * BLOCK_REWARD_HOURS * 0.01 * 0.99
    wins = int(paid_at_once.sum())
    assert 1 <= wins <= 10  # about one per 60 days at allocation 1 over ~200 days
    first = int(np.flatnonzero(paid_at_once)[0])
    per_hour = 0.75 * BLOCK_REWARD_HOURS * 0.01 / BLOCK_REWARD_VESTING_HOURS
    assert rewards[first] == pytest.approx(0.25 * BLOCK_REWARD_HOURS * 0.01)
    assert rewards[first + 1] == pytest.approx(per_hour)  # vesting starts the hour after the win
    # after 180 days the first win is fully paid: nothing more from it
    window = rewards[first + 1 : first + 1 + BLOCK_REWARD_VESTING_HOURS]
    assert window[~paid_at_once[first + 1 : first + 1 + BLOCK_REWARD_VESTING_HOURS]].min() >= per_hour - 1e-12
    assert rewards.sum() <= wins * BLOCK_REWARD_HOURS * 0.01 + 1e-9
    # one certain win (the win probability is proportional to the allocation): paid in full, then nothing
    forced = np.zeros(n)
    forced[10] = 2000.0
    single = _block_rewards(income, forced, np.random.default_rng(5))
    assert single[10] == pytest.approx(0.25 * BLOCK_REWARD_HOURS * 0.01)
    assert np.allclose(single[11 : 11 + BLOCK_REWARD_VESTING_HOURS], per_hour)
    assert not single[11 + BLOCK_REWARD_VESTING_HOURS :].any() and not single[:10].any()
    assert single.sum() == pytest.approx(BLOCK_REWARD_HOURS * 0.01)
    no_wins = _block_rewards(income, np.zeros(n), np.random.default_rng(5))
    assert not no_wins.any()  # no committed storage, no block rewards


# ------------------------------------------------------------------ the closed-loop environment (#12 s1)


def test_simulate_is_the_environment_driven_by_its_own_random_path(small_catalog):
    """simulate == HostEnvironment stepped hour by hour with its random allocation path: one model, no drift."""
    from earnopt_assets.environment import HostEnvironment

    expected = simulate(small_catalog, days=15, seed=4, end=END)
    env = HostEnvironment(small_catalog, hours=15 * 24, seed=4, end=END, response="power")
    hours = [env.step(dict(zip(env.names, row))) for row in env.random_allocation]
    stepped = pd.concat(hours, ignore_index=True).sort_values(["protocol", "ts"], kind="stable").reset_index(drop=True)
    ordered = expected.telemetry.sort_values(["protocol", "ts"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(stepped, ordered)
    pd.testing.assert_frame_equal(env.labels(), expected.labels)
    assert env.done and env.restarts() == int(env.restarted.sum()) > 0  # the random path moves every 2-6 days
    with pytest.raises(ValueError, match="ends after"):
        env.step(dict.fromkeys(env.names, 0.5))


def test_restarts_cost_the_catalogs_restart_minutes(small_catalog):
    from earnopt_assets.environment import HostEnvironment

    def run(restart_costs: bool) -> tuple[HostEnvironment, pd.DataFrame]:
        env = HostEnvironment(small_catalog, hours=48, seed=2, end=END, response="power", inject_anomalies=False, restart_costs=restart_costs)
        path = np.tile([0.5, 0.6, 0.5], (48, 1))
        path[10:, 0] = 0.53  # honeygain +3 pp: within the 5 pp threshold, adjusted in place
        path[20:, 2] = 0.9  # akash +40 pp: restart
        return env, env.run(path)

    env, paid = run(True)
    _, free = run(False)
    threshold = small_catalog.allocation.change_threshold
    assert threshold == pytest.approx(0.05)
    akash = small_catalog.require("akash")
    cost = paid["earnings_usd"].to_numpy() / np.where(free["earnings_usd"] > 0, free["earnings_usd"], np.nan)
    row = paid.index[(paid["protocol"] == "akash") & (paid["ts"] == env.ts[20])][0]
    assert cost[row] == pytest.approx(1 - akash.restart_minutes / 60, rel=1e-6)  # 15 min of 60 lost
    others = np.delete(np.arange(len(paid)), row)
    assert np.allclose(cost[others][np.isfinite(cost[others])], 1.0)  # the 3 pp change and steady hours cost nothing
    assert env.restarts() == 1 and env.downtime_hours() == pytest.approx(akash.restart_minutes / 60)
    with pytest.raises(ValueError, match="no share for"):
        env.step({"honeygain": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        env.step({"honeygain": 1.5, "storj": 0.6, "akash": 0.5})


def test_hidden_responses_have_the_shapes_real_apps_have(catalog):
    from earnopt_assets.environment import draw_hidden_response

    shares = np.linspace(0, 1, 101)
    flat = np.ones_like(shares)
    curves = {name: draw_hidden_response(catalog.require(name), seed=3) for name in ("honeygain", "storj", "filecoin", "akash")}
    bandwidth = curves["honeygain"]
    served = bandwidth.factor(shares, flat)
    saturated = shares >= bandwidth.saturation_share
    assert np.allclose(served[saturated], served[-1]) and (np.diff(served[~saturated]) > 0).all()  # extra bandwidth earns nothing
    for name in ("storj", "filecoin"):
        storage = curves[name]
        paid = storage.factor(shares, flat)
        below = shares < storage.minimum_share - 1e-9
        assert storage.minimum_share >= catalog.require(name).min_allocation
        assert not paid[below].any() and (paid[~below] > 0).all()
        above = shares[~below]
        slope = np.polyfit(np.log(above), np.log(paid[~below]), 1)[0]
        assert 0.85 < slope < 1.05  # roughly linear in capacity above the minimum
    compute = curves["akash"]
    leases = compute.factor(shares, flat)
    assert len(np.unique(leases)) == int(np.floor(1 / compute.lease_share + 1e-9)) + 1  # whole leases only
    assert leases[shares < compute.lease_share - 1e-9].max() == 0
    # per seed: another seed draws other curves
    assert draw_hidden_response(catalog.require("honeygain"), seed=4) != bandwidth


def test_hidden_curves_are_out_of_a_policys_reach(small_catalog):
    from earnopt_assets.environment import HiddenResponse, HostEnvironment, oracle_view

    env = HostEnvironment(small_catalog, hours=24, seed=1, end=END)
    public = {k: v for k, v in vars(env).items() if not k.startswith("_")}
    assert not [k for k, v in public.items() if isinstance(v, HiddenResponse) or (isinstance(v, list) and any(isinstance(x, HiddenResponse) for x in v))]
    assert {item["response"].shape for item in oracle_view(env).values()} == {"saturating", "threshold_linear", "lumpy"}
    # the same world answers two allocations differently, everything not driven by the share stays the same
    low, high = (HostEnvironment(small_catalog, hours=24, seed=1, end=END) for _ in range(2))
    a = low.run(np.tile([0.2, 0.9, 0.2], (24, 1)))
    b = high.run(np.tile([0.9, 0.9, 0.9], (24, 1)))
    assert a["connection_failures"].equals(b["connection_failures"]) and a["latency_ms"].equals(b["latency_ms"])
    assert b.loc[b["protocol"] == "akash", "earnings_usd"].sum() > a.loc[a["protocol"] == "akash", "earnings_usd"].sum()

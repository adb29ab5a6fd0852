"""Champion/challenger governance and the serving rule, on score tables (plain Python, no model)."""

from __future__ import annotations

import pytest

from earnopt_assets.forecasting.registry import (
    CHAMPION_KEY,
    FALLBACK_SOURCE,
    LSTM_SOURCE,
    choose_source,
    judge_challenger,
    read_serving_decision,
    score_row,
    write_serving_decision,
)


def scores(**mapes: float | None) -> dict[str, dict]:
    return {name: score_row({"mape_pct": value, "mase": None if value is None else value / 10, "n_origins": 7}) for name, value in mapes.items()}


def test_failed_challenger_keeps_the_champion():
    table = scores(seasonal_naive_24=12.0, seasonal_naive_168=9.0, ets=10.0, lstm=11.0, champion=8.0)
    verdict = judge_challenger(table, target_pct=15.0, champion_version="v1")
    assert not verdict.check.passed  # 11 % > seasonal_naive_168's 9 %
    assert not verdict.promote
    assert "worse than seasonal_naive_168 (9.00%)" in verdict.summary and "champion v1 stays" in verdict.summary


def test_passing_challenger_worse_than_the_champion_is_not_promoted():
    table = scores(seasonal_naive_24=12.0, ets=10.0, lstm=7.0, champion=6.0)
    verdict = judge_challenger(table, target_pct=15.0, champion_version="v1")
    assert verdict.check.passed and not verdict.promote
    assert "worse than champion v1 (6.00%) on the same holdout" in verdict.summary


def test_better_passing_challenger_is_promoted():
    table = scores(seasonal_naive_24=12.0, ets=10.0, lstm=5.0, champion=6.0)
    verdict = judge_challenger(table, target_pct=15.0, champion_version="v1")
    assert verdict.check.passed and verdict.promote
    assert verdict.summary.startswith("promoted: challenger MAPE 5.00% < 15% target")
    assert verdict.to_json()["promoted"] is True


def test_first_challenger_without_champion_is_promoted_when_it_passes():
    verdict = judge_challenger(scores(seasonal_naive_24=12.0, lstm=5.0), target_pct=15.0)
    assert verdict.promote and verdict.champion_version is None


def test_challenger_without_mape_is_never_promoted():
    verdict = judge_challenger(scores(seasonal_naive_24=12.0, lstm=None), target_pct=15.0)
    assert not verdict.promote and not verdict.check.passed
    assert "no holdout MAPE" in verdict.summary


def test_worse_than_statistical_means_the_statistical_candidate_serves_with_its_name():
    # The series: same hour last week 1.9 %, same hour yesterday 6.5 %, the champion 4 %.
    table = scores(seasonal_naive_24=6.5, seasonal_naive_168=1.9, mstl=3.0, ets=5.0, lstm=4.0)
    decision = choose_source("storj", table, target_pct=15.0, champion_version="v1")
    assert decision.source == "seasonal_naive_168" and not decision.below_target
    assert decision.model_version is None and decision.champion_version == "v1"
    assert decision.reason.startswith("seasonal_naive_168 holdout MAPE 1.90% < 15% target, best of 5 candidates; next mstl 3.00%")
    assert "champion v1 scored 4.00%" in decision.reason


def test_champion_serves_when_it_is_the_best_passing_candidate():
    decision = choose_source("storj", scores(seasonal_naive_24=6.5, ets=5.0, lstm=2.0), champion_version="v7")
    assert decision.source == LSTM_SOURCE and decision.model_version == "v7" and not decision.below_target


def test_a_champion_without_correction_serves_under_a_name_that_says_so():
    decision = choose_source("storj", scores(mstl=6.0, lstm=4.0), champion_version="v3", lstm_name="lstm_base_only")
    assert decision.source == "lstm_base_only" and decision.model_version == "v3"
    assert decision.reason.startswith("lstm_base_only holdout MAPE 4.00%")


def test_below_target_serves_the_best_candidate_flagged():
    # akash today: the model 16 %, the baselines 31 % and more. Never serve the one that scored worse.
    table = scores(seasonal_naive_24=31.0, seasonal_naive_168=40.0, ets=33.0, lstm=16.0, champion=17.0)
    verdict = judge_challenger(table, target_pct=15.0, champion_version="v1")
    assert not verdict.check.passed  # the check still fails ...
    assert verdict.promote  # ... but it is the best candidate there is
    assert "promoted below target" in verdict.summary
    decision = choose_source("akash", {k: v for k, v in table.items() if k != CHAMPION_KEY}, target_pct=15.0, champion_version="v2")
    assert decision.source == LSTM_SOURCE and decision.below_target and decision.mape_pct == 16.0
    assert decision.reason.startswith("below target: lstm holdout MAPE 16.00% is the best of 4 candidates but none meets the 15% target")


def test_below_target_statistical_when_the_model_is_worse():
    table = scores(seasonal_naive_24=31.0, ets=20.0, lstm=25.0)
    verdict = judge_challenger(table, target_pct=15.0)
    assert not verdict.promote  # worse than ets: never promoted, so never served
    decision = choose_source("akash", table, target_pct=15.0, champion_version=None)
    assert decision.source == "ets" and decision.below_target
    assert "no LSTM champion" in decision.reason


def test_a_rejected_challenger_score_never_serves_without_a_champion():
    table = scores(seasonal_naive_24=31.0, lstm=16.0)
    decision = choose_source("akash", table, champion_version=None)
    assert decision.source == "seasonal_naive_24" and decision.below_target


def test_a_candidate_that_missed_origins_is_not_ranked():
    table = scores(seasonal_naive_24=9.0, mstl=2.0)
    table["mstl"] = score_row({"mape_pct": 2.0, "n_origins": 3}, total_origins=7)
    table["seasonal_naive_24"] = score_row({"mape_pct": 9.0, "n_origins": 7}, total_origins=7)
    assert choose_source("storj", table).source == "seasonal_naive_24"


def test_no_scorable_candidate_falls_back_and_says_so():
    decision = choose_source("akash", scores(seasonal_naive_24=None, mstl=None))
    assert decision.source == FALLBACK_SOURCE and decision.below_target
    assert "too little history" in decision.reason


def test_serving_decision_round_trips_as_json(tmp_path):
    decision = choose_source("storj", scores(seasonal_naive_24=6.5, ets=5.0, lstm=2.0), champion_version="v7")
    decision.intervals = {"levels": [0.8, 0.95]}
    path = write_serving_decision(tmp_path, decision)
    assert path == tmp_path / "serving" / "storj.json"
    again = read_serving_decision(tmp_path, "storj")
    assert again == decision
    assert read_serving_decision(tmp_path, "akash") is None
    with pytest.raises(ValueError):
        read_serving_decision(tmp_path, "../etc")


def test_ets_serves_as_the_frozen_form_it_was_scored_as_and_the_refit_stays_the_peer():
    from earnopt_assets.forecasting.registry import FROZEN_ETS_KEY

    # the refit (6 %) would win, but it is not what serves: the frozen form's 9 % is ranked as ets
    table = scores(seasonal_naive_24=8.0, ets=6.0, lstm=10.0, **{FROZEN_ETS_KEY: 9.0})
    decision = choose_source("storj", table, champion_version="v1")
    assert decision.source == "seasonal_naive_24" and decision.scores["ets"]["mape_pct"] == 6.0
    table = scores(seasonal_naive_24=8.0, ets=6.0, lstm=10.0, **{FROZEN_ETS_KEY: 7.0})
    decision = choose_source("storj", table, champion_version="v1")
    assert decision.source == "ets" and decision.mape_pct == 7.0 and "frozen before the holdout" in decision.reason
    # the check's statistical bar still includes the refit peer
    assert not judge_challenger(scores(seasonal_naive_24=8.0, ets=6.0, lstm=6.5, **{FROZEN_ETS_KEY: 7.0}), target_pct=15.0).check.passed
    # without frozen parameters ets is ranked and served as the refit, and the reason says so
    refit = choose_source("storj", scores(seasonal_naive_24=8.0, ets=6.0, lstm=10.0), champion_version="v1")
    assert refit.source == "ets" and refit.mape_pct == 6.0 and "ets refits per request" in refit.reason

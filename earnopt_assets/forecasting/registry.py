"""The model store seen without TensorFlow, and the governance of what serves each protocol's forecast.

Layout (the model files are owned by the model package through :class:`earnopt_assets.modelstore.ModelStore`;
this module reads JSON only and never imports TensorFlow)::

    <models>/lstm/<protocol>/CURRENT                 name of the champion version (moved only by set_current)
    <models>/lstm/<protocol>/versions/<version>/     model files + metrics/metadata JSON (challengers too)
    <models>/serving/<protocol>.json                 the serving decision (see :class:`ServingDecision`)

Champion / challenger. Every training run produces a challenger (the new LSTM) that is scored by the
rolling-origin harness on the recent holdout together with every statistical candidate and with the current
champion re-scored on the SAME origins. :func:`judge_challenger` decides:

* the check ``mape_within_target`` passes when challenger MAPE < target AND challenger MAPE <= the best
  statistical candidate's MAPE;
* CURRENT moves to the challenger only when it is no worse than the best statistical candidate AND no worse
  than the champion on the same holdout AND (it passes the check OR no candidate at all meets the target,
  i.e. it is the best available forecast, in which case it serves flagged ``below_target``).
  Otherwise the champion stays and the verdict says why.

Serving. :func:`choose_source` picks the candidate with the lowest holdout MAPE (ties: lower MASE) among the
statistical candidates and the champion. When that MAPE is below the target it is the best passing candidate;
when no candidate meets the target the best one serves anyway, flagged ``below_target`` (its check still
fails, and the allocation widens its interval). A candidate that scored worse never serves, and a model that
scored worse than a statistical candidate is never promoted, so it never serves. Serves = scored: the ``ets``
source ranks with the score of ``ets_frozen`` (AutoETS parameters fitted before the holdout, frozen, carried in
the decision and applied per request) when training could fit them; the refit-per-origin ``ets`` stays in the
table as the statistical peer. Without parameters ``ets`` is ranked, and served, as the refit.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from earnopt_assets.atomic import atomic_write_json

DEFAULT_MAPE_TARGET_PCT = 15.0
LSTM_SOURCE = "lstm"
# The LSTM champion whose network correction got weight 0 on validation: its forecast is its statistical base.
LSTM_BASE_SOURCE = "lstm_base_only"
CHAMPION_KEY = "champion"  # the current champion re-scored on the challenger's holdout (score tables only)
FALLBACK_SOURCE = "seasonal_naive_fallback"  # gap-tolerant same-hour-earlier-day; used when no decision applies
# The ``ets`` peer refits AutoETS at every origin (the honest, stronger peer of the headline). What serves as
# ``ets`` is its parameters fitted once on data before the holdout and frozen: scored under this key, and the
# serving rule ranks that score (not the refit's) as the ``ets`` source.
ETS_SOURCE = "ets"
FROZEN_ETS_KEY = "ets_frozen"
SCORE_COLUMNS: tuple[str, ...] = ("mape_pct", "mase", "mae_usd", "rmse_usd", "coverage_80_pct", "coverage_95_pct", "n_origins")


def _utc_stamp() -> str:
    return pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def score_row(score: Any, total_origins: int | None = None) -> dict[str, Any]:
    """One candidate's score as a JSON-safe dict with :data:`SCORE_COLUMNS` keys (+ ``complete``).

    Accepts the harness's ``CandidateScore`` (attributes ``mape_pct``, ``mase``, ``mae``, ``rmse``,
    ``coverage_80_pct``, ``coverage_95_pct``, ``n_origins``) or a mapping with the same or column names.
    With ``total_origins`` a candidate that did not forecast every origin is marked ``complete: False``
    and is never ranked (it would be compared on other hours).
    """
    get = (lambda k: score.get(k)) if isinstance(score, Mapping) else (lambda k: getattr(score, k, None))
    first = lambda *keys: next((get(k) for k in keys if get(k) is not None), None)  # noqa: E731
    n = first("n_origins")
    return {
        "mape_pct": _finite(first("mape_pct", "mape")),
        "mase": _finite(first("mase")),
        "mae_usd": _finite(first("mae_usd", "mae")),
        "rmse_usd": _finite(first("rmse_usd", "rmse")),
        "coverage_80_pct": _finite(first("coverage_80_pct")),
        "coverage_95_pct": _finite(first("coverage_95_pct")),
        "n_origins": int(n) if n is not None else 0,
        "complete": True if total_origins is None else (n is not None and int(n) == int(total_origins) and total_origins > 0),
    }


def _rank_key(name: str, row: Mapping[str, Any]) -> tuple[float, float, str]:
    mape = row.get("mape_pct")
    mase = row.get("mase")
    return (math.inf if mape is None else float(mape), math.inf if mase is None else float(mase), name)


def best_candidate(scores: Mapping[str, Mapping[str, Any]], names: list[str] | None = None) -> str | None:
    """Lowest MAPE (ties: lower MASE, then name) among ``names`` (default all) with a MAPE; None if none has one."""
    pool = [
        n for n in (names if names is not None else list(scores))
        if n in scores and scores[n].get("mape_pct") is not None and scores[n].get("complete", True)
    ]
    return min(pool, key=lambda n: _rank_key(n, scores[n])) if pool else None


def statistical_names(scores: Mapping[str, Any]) -> list[str]:
    return [n for n in scores if n not in (LSTM_SOURCE, CHAMPION_KEY)]


@dataclass(frozen=True)
class MapeCheckOutcome:
    """Passes when holdout MAPE < target AND model MAPE <= the best statistical candidate's MAPE."""

    passed: bool
    model_mape: float | None
    baseline: str
    baseline_mape: float | None
    threshold: float
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "model_mape": self.model_mape,
            "baseline": self.baseline,
            "baseline_mape": self.baseline_mape,
            "threshold": self.threshold,
            "reasons": list(self.reasons),
            "checked_at": _utc_stamp(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MapeCheckOutcome:
        return cls(
            passed=bool(data.get("passed")),
            model_mape=_finite(data.get("model_mape")),
            baseline=str(data.get("baseline") or ""),
            baseline_mape=_finite(data.get("baseline_mape")),
            threshold=float(data.get("threshold") or DEFAULT_MAPE_TARGET_PCT),
            reasons=tuple(data.get("reasons") or ()),
        )


def _check(model_mape: float | None, baseline: str, baseline_mape: float | None, threshold_pct: float) -> MapeCheckOutcome:
    reasons: list[str] = []
    if model_mape is None:
        reasons.append("no holdout MAPE (no usable holdout hours or every actual was 0)")
    else:
        if not model_mape < threshold_pct:
            reasons.append(f"holdout MAPE {model_mape:.2f}% is not below the {threshold_pct:g}% target")
        if baseline_mape is not None and model_mape > baseline_mape:
            reasons.append(f"holdout MAPE {model_mape:.2f}% is worse than {baseline} ({baseline_mape:.2f}%)")
    return MapeCheckOutcome(not reasons, model_mape, baseline, baseline_mape, float(threshold_pct), tuple(reasons))


def judge_mape(metrics: Mapping[str, Any], threshold_pct: float = DEFAULT_MAPE_TARGET_PCT) -> MapeCheckOutcome:
    """The ``mape_within_target`` rule on an evaluation dict ``{"model": {"mape": ..}, "<baseline>": {"mape": ..}}``:
    every key other than ``model`` holding a ``mape`` counts as a statistical candidate."""
    model_mape = _finite((metrics.get("model") or {}).get("mape"))
    others = {k: {"mape_pct": _finite(v.get("mape", v.get("mape_pct")))} for k, v in metrics.items() if k != "model" and isinstance(v, Mapping)}
    baseline = best_candidate(others) or "seasonal_naive_24"
    return _check(model_mape, baseline, (others.get(baseline) or {}).get("mape_pct"), threshold_pct)


@dataclass(frozen=True)
class ChallengerVerdict:
    """What one training run decided: the challenger's check, whether CURRENT moves, and why."""

    check: MapeCheckOutcome
    promote: bool
    reasons: tuple[str, ...]
    best_statistical: str | None
    champion_version: str | None
    champion_mape: float | None

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {
            "promoted": self.promote,
            "reasons": list(self.reasons),
            "best_statistical": self.best_statistical,
            "champion_version": self.champion_version,
            "champion_mape_pct": self.champion_mape,
            "check": self.check.to_json(),
        }


def judge_challenger(
    scores: Mapping[str, Mapping[str, Any]],
    *,
    target_pct: float = DEFAULT_MAPE_TARGET_PCT,
    champion_version: str | None = None,
) -> ChallengerVerdict:
    """Champion/challenger rule (module docstring) on one harness run.

    ``scores``: score rows (:func:`score_row`) by candidate: the statistical candidates, ``"lstm"`` = the
    challenger and, when a champion exists, ``"champion"`` = the champion re-scored on the same origins.
    """
    challenger = _finite((scores.get(LSTM_SOURCE) or {}).get("mape_pct"))
    stats = statistical_names(scores)
    best_stat = best_candidate(scores, stats)
    best_stat_mape = _finite(scores[best_stat]["mape_pct"]) if best_stat else None
    check = _check(challenger, best_stat or "no statistical candidate", best_stat_mape, target_pct)
    has_champion = CHAMPION_KEY in scores
    champion_mape = _finite((scores.get(CHAMPION_KEY) or {}).get("mape_pct")) if has_champion else None
    keep = f"champion {champion_version} stays" if has_champion else "no champion; statistical candidates serve"
    if challenger is None:
        return ChallengerVerdict(check, False, (f"challenger has no holdout MAPE; {keep}",), best_stat, champion_version, champion_mape)
    if best_stat_mape is not None and challenger > best_stat_mape:
        why = f"challenger MAPE {challenger:.2f}% is worse than {best_stat} ({best_stat_mape:.2f}%); {keep}"
        return ChallengerVerdict(check, False, (why,), best_stat, champion_version, champion_mape)
    if has_champion and champion_mape is not None and challenger > champion_mape:
        why = f"challenger MAPE {challenger:.2f}% is worse than champion {champion_version} ({champion_mape:.2f}%) on the same holdout; {keep}"
        return ChallengerVerdict(check, False, (why,), best_stat, champion_version, champion_mape)
    versus = f"<= champion {champion_version} {champion_mape:.2f}%" if champion_mape is not None else "no champion yet"
    stat_text = f"{best_stat} {best_stat_mape:.2f}%" if best_stat_mape is not None else "no statistical candidate"
    if check.passed:
        why = f"promoted: challenger MAPE {challenger:.2f}% < {target_pct:g}% target, <= {stat_text}, {versus}"
    else:
        why = (
            f"promoted below target: challenger MAPE {challenger:.2f}% misses the {target_pct:g}% target but is the best "
            f"candidate ({stat_text}, {versus}); it serves flagged below target"
        )
    return ChallengerVerdict(check, True, (why,), best_stat, champion_version, champion_mape)


@dataclass
class ServingDecision:
    """Which forecaster serves a protocol, why, and its holdout scores and interval quantiles."""

    protocol: str
    source: str
    reason: str
    below_target: bool
    mape_pct: float | None
    target_pct: float
    model_version: str | None  # the champion version when ``source == "lstm"``
    champion_version: str | None = None
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    intervals: dict[str, Any] | None = None  # ConformalIntervals.to_json() of the served source
    decided_at: str = field(default_factory=_utc_stamp)
    holdout_start: str | None = None
    training: dict[str, Any] | None = None  # the ChallengerVerdict of the run that decided
    ets: dict[str, Any] | None = None  # frozen_ets_block(): the parameters an ``ets`` answer applies

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServingDecision:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def choose_source(
    protocol: str,
    scores: Mapping[str, Mapping[str, Any]],
    *,
    target_pct: float = DEFAULT_MAPE_TARGET_PCT,
    champion_version: str | None = None,
    lstm_name: str = LSTM_SOURCE,
) -> ServingDecision:
    """The serving rule (module docstring). ``scores`` holds the statistical candidates and, when a champion
    exists, its score under ``"lstm"`` (the champion's, not a rejected challenger's). ``lstm_name`` is the
    name the champion serves under (:data:`LSTM_BASE_SOURCE` when its network correction has weight 0)."""
    eligible = {k: dict(v) for k, v in scores.items() if k != CHAMPION_KEY}
    frozen = eligible.pop(FROZEN_ETS_KEY, None)
    if frozen is not None:  # what serves as ets is the frozen form: rank its score, not the refit peer's
        eligible[ETS_SOURCE] = frozen
    if LSTM_SOURCE in eligible and champion_version is None:
        eligible.pop(LSTM_SOURCE)  # no champion: the LSTM score is a rejected challenger's
    if LSTM_SOURCE in eligible and lstm_name != LSTM_SOURCE:
        eligible[lstm_name] = eligible.pop(LSTM_SOURCE)
    best = best_candidate(eligible)
    table = {k: dict(v) for k, v in scores.items()}
    if best is None:
        return ServingDecision(
            protocol, FALLBACK_SOURCE, "no candidate could be scored on the holdout (too little history); same hour on an earlier day serves",
            True, None, float(target_pct), None, champion_version, table,
        )
    mape = float(eligible[best]["mape_pct"])
    ranked = sorted((n for n in eligible if eligible[n].get("mape_pct") is not None and eligible[n].get("complete", True)), key=lambda n: _rank_key(n, eligible[n]))
    runner = next((n for n in ranked if n != best), None)
    after = f"; next {runner} {float(eligible[runner]['mape_pct']):.2f}%" if runner else ""
    below = not mape < target_pct
    if below:
        reason = f"below target: {best} holdout MAPE {mape:.2f}% is the best of {len(ranked)} candidates but none meets the {target_pct:g}% target{after}"
    else:
        reason = f"{best} holdout MAPE {mape:.2f}% < {target_pct:g}% target, best of {len(ranked)} candidates{after}"
    if best != lstm_name and champion_version is not None and lstm_name in eligible:
        reason += f" (champion {champion_version} scored {float(eligible[lstm_name]['mape_pct']):.2f}%)"
    elif champion_version is None and LSTM_SOURCE in scores:
        reason += " (no LSTM champion: the challenger was not promoted)"
    if best == ETS_SOURCE:
        reason += (
            "; ets serves AutoETS parameters frozen before the holdout (scored as ets_frozen)" if frozen is not None
            else "; no frozen ETS parameters: ets refits per request (scored as the refit)"
        )
    return ServingDecision(
        protocol, best, reason, below, mape, float(target_pct),
        champion_version if best == lstm_name else None, champion_version, table,
    )


def _canonical(parameters: Mapping[str, Any]) -> str:
    return json.dumps(dict(parameters), sort_keys=True, separators=(",", ":"))


def frozen_ets_block(ets: Any) -> dict[str, Any]:
    """The decision's ``ets`` field: a FrozenETS's JSON parameters and the sha256 of their canonical text."""
    parameters = ets.to_json()
    return {"parameters": parameters, "sha256": hashlib.sha256(_canonical(parameters).encode()).hexdigest()}


@lru_cache(maxsize=256)
def _frozen_from_text(text: str) -> Any:
    from earnopt_assets.forecasting.model.ets import FrozenETS

    return FrozenETS.from_json(json.loads(text))  # one instance per parameter set: its matrices are cached on it


def frozen_ets_of(decision: ServingDecision | None) -> tuple[Any | None, str | None]:
    """(FrozenETS, None) when ``decision`` carries intact frozen ETS parameters, else (None, why the ``ets``
    source refits per request instead)."""
    block = None if decision is None else decision.ets
    if not block:
        return None, "the serving decision carries no frozen ETS parameters (decided before they existed, or the fit failed): ets refits per request"
    try:
        text = _canonical(block["parameters"])
        if hashlib.sha256(text.encode()).hexdigest() != block.get("sha256"):
            return None, "the serving decision's frozen ETS parameters do not match their sha256: ets refits per request"
        return _frozen_from_text(text), None
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"the serving decision's frozen ETS parameters are unusable ({exc}): ets refits per request"


# ---------------------------------------------------------------------------------------------- files


def _check_name(protocol: str) -> str:
    if not protocol or "/" in protocol or "\\" in protocol or protocol.startswith("."):
        raise ValueError(f"invalid protocol name {protocol!r}")
    return protocol


def _store(models_dir: str | Path):
    from earnopt_assets.forecasting.model.persistence import model_store

    return model_store(models_dir)


def model_root(models_dir: str | Path, protocol: str) -> Path:
    """Directory of one protocol's LSTM versions and its CURRENT pointer (the model store's layout)."""
    return _store(models_dir).model_dir(_check_name(protocol))


def current_version(models_dir: str | Path, protocol: str) -> str | None:
    """The champion version the ``CURRENT`` pointer names, or None."""
    return _store(models_dir).current(_check_name(protocol))


def set_current(models_dir: str | Path, protocol: str, version: str) -> None:
    """Move ``CURRENT`` to ``version`` atomically: the only place governance promotes a model."""
    _store(models_dir).promote(_check_name(protocol), version)


def version_dir(models_dir: str | Path, protocol: str, version: str) -> Path:
    return _store(models_dir).path(_check_name(protocol), version)


def serving_path(models_dir: str | Path, protocol: str) -> Path:
    return Path(models_dir) / "serving" / f"{_check_name(protocol)}.json"


def write_serving_decision(models_dir: str | Path, decision: ServingDecision) -> Path:
    return atomic_write_json(serving_path(models_dir, decision.protocol), decision.to_json())


def read_serving_decision(models_dir: str | Path, protocol: str) -> ServingDecision | None:
    """The persisted decision, or None when no training run has decided for this protocol yet."""
    path = serving_path(models_dir, protocol)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ServingDecision.from_json(data)
    except (OSError, ValueError, TypeError):
        return None


def read_model_summary(models_dir: str | Path, protocol: str, version: str | None = None) -> dict[str, Any] | None:
    """``metadata.json`` of ``version`` (default: the champion) merged with ``metrics``; None when absent.

    Reads JSON only (no TensorFlow): cheap enough for sensors and the allocation tick.
    """
    version = version or current_version(models_dir, protocol)
    if version is None:
        return None
    directory = version_dir(models_dir, protocol, version)
    try:
        metadata = json.loads((directory / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    try:
        metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = {}
    return {**metadata, "version": version, "metrics": metrics}


def record_mape_check(models_dir: str | Path, protocol: str, version: str, outcome: MapeCheckOutcome) -> Path:
    """Store the check result in the version's ``metadata.json`` (atomic rewrite)."""
    path = version_dir(models_dir, protocol, version) / "metadata.json"
    metadata = json.loads(path.read_text(encoding="utf-8"))
    metadata["mape_check"] = outcome.to_json()
    return atomic_write_json(path, metadata)


def check_passed(summary: Mapping[str, Any] | None) -> bool | None:
    """True/False once the check has run on this version, None before."""
    if not summary:
        return None
    check = summary.get("mape_check")
    if isinstance(check, Mapping) and isinstance(check.get("passed"), bool):
        return bool(check["passed"])
    return None

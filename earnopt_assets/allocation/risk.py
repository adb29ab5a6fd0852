"""Decisions under uncertainty: plan on a lower bound of the forecast and move only when the move pays.

Each forecast f_i ($/h, at the share a_i it was made for) carries a split-conformal 80 % interval
(``lower_80``). Its downside standard deviation is read from the interval's lower end (the 10 % quantile
of a normal)::

    sigma_i   = max(0, f_i - lower_80_i) / z_0.9          (z_0.9 = 1.2816; 0 when there is no interval)
    s_i       = sigma_i * p_i / f_i                        (the same uncertainty on the potential p_i)

With lambda = ``allocation.risk_aversion`` (catalog):

* planning: the optimiser maximises sum_i max(0, p_i - lambda s_i) r_i(x_i), i.e. mean - lambda * downside
  of every protocol's earnings, so shares move towards protocols whose earnings are certain;
* deciding: the gain of the move G = sum_i p_i (r_i(proposed_i) - r_i(current_i)) has the (fully
  correlated, so conservative) standard deviation sigma_G = sum_i s_i |r_i(proposed_i) - r_i(current_i)|.
  The plan is applied only if, besides the rule's other criteria,

      G - C / h - lambda sigma_G > min_net_benefit_usd_per_hour

  (C the restart cost, h the amortisation horizon): under a normal error the gain beats the restart cost
  with probability Phi(lambda) - 50 % at lambda = 0, ~80 % at 0.84 (the default), ~95 % at 1.64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from earnopt_assets.allocation.allocator import ReallocationDecision
from earnopt_assets.numerics.response import ResponseCurve

Z_80_LOWER = 1.2815515655446004  # the 80 % central interval's lower end is the 10 % quantile
RISK_CRITERION = "gain_beats_cost_with_probability"


def downside_sd(expected: float, lower_80: float | None) -> float:
    """sigma = max(0, f - lower_80) / 1.2816 ($/h); 0 without an interval."""
    if lower_80 is None or not math.isfinite(lower_80) or not math.isfinite(expected):
        return 0.0
    return max(0.0, expected - lower_80) / Z_80_LOWER


def potential_sd(potential: float, expected: float, sd: float) -> float:
    """s = sigma * p / f: the forecast's uncertainty carried to the full-allocation potential."""
    return sd * potential / expected if expected > 0 and sd > 0 else 0.0


def planning_potentials(potentials: Mapping[str, float], sds: Mapping[str, float], risk_aversion: float) -> dict[str, float]:
    """max(0, p_i - lambda s_i): what the optimiser plans on."""
    return {n: max(0.0, p - risk_aversion * sds.get(n, 0.0)) for n, p in potentials.items()}


def gain_sd(sds: Mapping[str, float], curves: Mapping[str, ResponseCurve], current: Mapping[str, float], proposed: Mapping[str, float]) -> float:
    """sigma_G = sum_i s_i |r_i(proposed_i) - r_i(current_i)| ($/h)."""
    return float(sum(s * abs(float(curves[n].relative(proposed[n])) - float(curves[n].relative(current[n])))
                     for n, s in sds.items() if n in proposed and n in current))


def probability_gain_beats_cost(net_benefit: float, sd: float) -> float:
    """Phi(net / sigma_G) under a normal error (1 or 0 when sigma_G = 0)."""
    if sd <= 0:
        return 1.0 if net_benefit > 0 else 0.0
    return 0.5 * (1.0 + math.erf(net_benefit / sd / math.sqrt(2.0)))


def apply_risk_rule(decision: ReallocationDecision, sd: float, risk_aversion: float) -> ReallocationDecision:
    """Add the criterion G - C/h - lambda sigma_G > min net benefit to the decision (a forced move stays forced)."""
    floor = decision.thresholds.min_net_benefit_usd_per_hour
    margin = decision.net_benefit_usd_per_hour - risk_aversion * sd
    passed = margin > floor
    probability = probability_gain_beats_cost(decision.net_benefit_usd_per_hour, sd)
    reason = (f"risk (lambda {risk_aversion:g}): net benefit {decision.net_benefit_usd_per_hour:.6f} - lambda x sd {sd:.6f} "
              f"= {margin:.6f} $/h {'>' if passed else '<='} {floor:g} $/h; the gain beats the restart cost with "
              f"probability {100 * probability:.0f} %")
    criteria = {**decision.criteria, RISK_CRITERION: passed}
    reallocate = decision.reallocate and (passed or decision.forced_reason is not None)
    return replace(decision, reallocate=reallocate, criteria=criteria, reasons=[*decision.reasons, reason])

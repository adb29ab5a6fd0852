"""The actuator: turn a plan file into container changes, with guardrails, rollback and confirmation.

:func:`decide_action` (pure) chooses per protocol, from the limits its share means and what the container
runs with now:

* share 0 -> ``stop`` (if running); a share again after a stop -> ``start`` with the new limits;
* the plan says ``restart`` -> ``docker update`` then a restart, unless the protocol already restarted
  ``max_restarts_per_day`` times in the last 24 h (then the limits are adjusted in place and the reason says so);
* other limit changes -> ``adjust`` (``docker update``, no restart); identical limits -> ``keep``.

:func:`actuate` runs the steps. If any step fails, or the limits read back by ``docker inspect`` differ from
the target, every container changed in the run is put back to its previous limits and running state
(``rolled_back``) and the outcome carries the failure for the alert. In ``dry_run`` nothing is changed:
each step is recorded as what it would have done.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from earnopt_assets.actuation.limits import ContainerLimits, target_from_plan
from earnopt_assets.actuation.store import ActuationRecord
from earnopt_assets.catalog import Catalog

logger = logging.getLogger("earnopt.actuation")

StepAction = Literal["adjust", "restart", "stop", "start", "keep", "none"]
Mode = Literal["off", "dry_run", "apply"]


@dataclass
class Step:
    protocol: str
    share: float
    target: ContainerLimits
    action: StepAction
    reason: str
    container: Any = None  # MappedContainer, None when skipped
    before: ContainerLimits | None = None
    status: str = "planned"
    changed: bool = False  # something on the container changed (rollback candidate)


@dataclass
class ActuationOutcome:
    actuation_id: str
    cycle_id: str
    device: str
    mode: Mode
    steps: list[Step] = field(default_factory=list)
    records: list[ActuationRecord] = field(default_factory=list)
    failure: str | None = None
    failed_protocol: str | None = None
    after: dict[str, ContainerLimits] = field(default_factory=dict)  # read back after the run

    @property
    def rolled_back(self) -> list[str]:
        return [s.protocol for s in self.steps if s.status == "rolled_back"]

    @property
    def confirmed(self) -> list[str]:
        return [s.protocol for s in self.steps if s.status == "confirmed"]


def decide_action(target: ContainerLimits, current: ContainerLimits, plan_action: str, restarts_today: int,
                  max_restarts_per_day: int) -> tuple[StepAction, str]:
    """What to do with one mapped container (pure); see the module docstring."""
    if not target.running:
        return ("stop", "share 0: stop the container") if current.running else ("keep", "share 0: already stopped")
    if not current.running:
        return "start", f"share returned: start with {target.describe()}"
    wants_restart = plan_action == "restart"
    if wants_restart and restarts_today >= max_restarts_per_day:
        cap = f"restart skipped: {restarts_today} restart(s) in the last 24 h reach the cap of {max_restarts_per_day}"
        if current.same_limits(target):
            return "keep", cap
        return "adjust", f"{cap}; limits adjusted in place to {target.describe()}"
    if wants_restart:
        return "restart", f"plan says restart: update to {target.describe()} and restart"
    if current.same_limits(target):
        return "keep", "limits already in force"
    return "adjust", f"docker update to {target.describe()} (no restart)"


def _record(outcome: ActuationOutcome, step: Step, status: str, reason: str, now: datetime,
            after: ContainerLimits | None = None) -> None:
    before = step.before
    after = after if after is not None else (step.target if step.action not in ("none",) else None)
    outcome.records.append(ActuationRecord(
        actuation_id=outcome.actuation_id, cycle_id=outcome.cycle_id, device=outcome.device, protocol=step.protocol,
        container=step.container.name if step.container else None, container_id=step.container.id if step.container else None,
        mode=outcome.mode, action=step.action, status=status, share=step.share,
        before_cpu_cores=before.cpu_cores if before else None, before_memory_mb=before.memory_mb if before else None,
        before_running=before.running if before else None,
        after_cpu_cores=after.cpu_cores if after and after.running else (before.cpu_cores if before and after else None),
        after_memory_mb=after.memory_mb if after and after.running else (before.memory_mb if before and after else None),
        after_running=after.running if after else None, reason=reason, recorded_at=now,
    ))


def _execute(runtime: Any, step: Step) -> None:
    container = step.container
    if step.action in ("adjust", "restart", "start"):
        runtime.update(container, step.target)
        step.changed = True  # only once the engine took it: a container that vanished has nothing to restore
    if step.action == "restart":
        runtime.restart(container)
    elif step.action == "start":
        runtime.start(container)
    elif step.action == "stop":
        runtime.stop(container)
        step.changed = True


def _restore(runtime: Any, step: Step) -> None:
    """Previous limits and running state back (a restart cannot be undone; its limits can)."""
    before, container = step.before, step.container
    assert before is not None
    if step.action != "stop":
        runtime.update(container, before)
    now = runtime.inspect(container)
    if before.running and not now.running:
        runtime.start(container)
    elif not before.running and now.running:
        runtime.stop(container)


def actuate(
    plan: Mapping[str, Any],
    catalog: Catalog,
    runtime: Any,
    mode: Mode,
    *,
    now: datetime,
    restarts_today: Mapping[str, int],
    before_step: Callable[[Step], None] | None = None,
) -> ActuationOutcome:
    """Act on one plan document (``data/allocation/latest.json`` with its ``limits`` section)."""
    settings = catalog.actuation
    outcome = ActuationOutcome(actuation_id=f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}", cycle_id=str(plan["cycle_id"]),
                               device=str(plan["device"]), mode=mode)
    actions = plan.get("actions") or {}
    entries = ((plan.get("limits") or {}).get("protocols") or {})
    for name, entry in entries.items():
        catalog.require(name)  # names from a file go through the catalog before anything else
        target = target_from_plan(entry)
        step = Step(name, float(entry["share"]), target, "none", "")
        outcome.steps.append(step)
        found, how = runtime.resolve(name, settings)
        if not found:
            step.reason, step.status = f"skipped: no {how} on this host" if "mapped" not in how else f"skipped: {how}", "skipped"
            continue
        if len(found) > 1:
            names = ", ".join(sorted(c.name for c in found))
            step.reason, step.status = f"skipped: {len(found)} containers match ({how}: {names}); map one by name", "skipped"
            continue
        step.container = found[0]
        step.before = runtime.inspect(step.container)
        plan_action = str((actions.get(name) or {}).get("action", "keep"))
        step.action, step.reason = decide_action(target, step.before, plan_action, int(restarts_today.get(name, 0)),
                                                 settings.max_restarts_per_day)

    for step in outcome.steps:
        if step.status == "skipped":
            _record(outcome, step, "skipped", step.reason, now)
        elif mode == "dry_run":
            step.status = "dry_run"
            _record(outcome, step, "dry_run", f"would {step.action}: {step.reason}" if step.action != "keep" else step.reason, now)
        else:
            _record(outcome, step, "planned", step.reason, now)
    if mode != "apply":
        return outcome

    active = [s for s in outcome.steps if s.status == "planned"]
    failed: Step | None = None
    for step in active:
        try:
            if before_step is not None:
                before_step(step)
            _execute(runtime, step)
            step.status = "applied"
            _record(outcome, step, "applied", step.reason, now)
        except Exception as exc:  # any engine error: stop here and roll back
            failed, step.status, outcome.failed_protocol = step, "failed", step.protocol
            outcome.failure = f"{step.protocol} ({step.container.name}): {step.action} failed: {_error_text(exc)}"
            _record(outcome, step, "failed", outcome.failure, now)
            break

    if failed is None:  # confirm: read every container back
        for step in active:
            try:
                seen = runtime.inspect(step.container)
            except Exception as exc:
                seen, problem = None, f"inspect failed: {_error_text(exc)}"
            else:
                ok = seen.running == step.target.running and (not step.target.running or seen.same_limits(step.target))
                problem = None if ok else f"docker inspect shows {seen.describe()}, not {step.target.describe()}"
            if seen is not None:
                outcome.after[step.protocol] = seen
            if problem is None:
                step.status = "confirmed"
                _record(outcome, step, "confirmed", f"docker inspect confirms {seen.describe()}", now, after=seen)
            else:
                step.status = "failed"
                outcome.failure = f"{step.protocol} ({step.container.name}): {problem}"
                _record(outcome, step, "failed", outcome.failure, now, after=seen)
                failed, outcome.failed_protocol = step, step.protocol
                break

    if failed is not None:
        for step in reversed([s for s in active if s.changed]):
            try:
                _restore(runtime, step)
            except Exception as exc:
                step.status = "rollback_failed"
                _record(outcome, step, "rollback_failed", f"rollback FAILED ({_error_text(exc)}) after: {outcome.failure}", now,
                        after=None)
                continue
            step.status = "rolled_back"
            _record(outcome, step, "rolled_back", f"previous limits restored ({step.before.describe()}) because {outcome.failure}",
                    now, after=step.before)
        for step in active:
            try:
                outcome.after[step.protocol] = runtime.inspect(step.container)
            except Exception:
                outcome.after.pop(step.protocol, None)
    return outcome


def _error_text(exc: Exception) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip()[:300] or type(exc).__name__

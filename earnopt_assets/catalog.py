"""Protocol catalog: the host's resource totals and every protocol that may run on it.

The catalog is a YAML file (default ``data/catalog.yaml``; override with ``EARNOPT_CATALOG``), validated
with pydantic so that a bad file fails loading with an error that names the field. Protocol names from
the outside world (API paths, landing files, partition keys) must go through :meth:`Catalog.require`
before they touch a path or a query.
"""

from __future__ import annotations

import os
import re
from enum import Enum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from earnopt_assets.settings import default_catalog_path

# Protocol names end up in file paths and partition keys: keep them to a safe, boring alphabet.
PROTOCOL_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class CatalogError(ValueError):
    """The catalog file is missing, unreadable or invalid. The message names the file and the field."""


class UnknownProtocolError(KeyError):
    """A protocol name that the catalog does not know."""

    def __init__(self, name: object, known: list[str]):
        self.name = name
        self.known = known
        super().__init__(f"unknown protocol {name!r}; the catalog knows: {', '.join(known)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class ProtocolKind(str, Enum):
    bandwidth = "bandwidth"
    storage = "storage"
    compute = "compute"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulationProfile(_Strict):
    """Parameters the simulator uses for this protocol. Ignored on real telemetry."""

    base_hourly_usd: float = Field(0.003, gt=0, description="Mean $/h at allocation 1.0 before seasonality.")
    price_volatility: float = Field(0.01, ge=0, le=0.2, description="Hourly std of the token price log random walk.")


class ProtocolSpec(_Strict):
    """One protocol. Resources are per unit of allocation: at allocation ``a`` it uses ``a * resource``."""

    name: str
    kind: ProtocolKind
    cpu_cores: float = Field(ge=0, description="CPU cores per unit of allocation.")
    memory_gb: float = Field(ge=0, description="Memory GB per unit of allocation.")
    bandwidth_mbps: float = Field(ge=0, description="Bandwidth Mbps per unit of allocation.")
    storage_gb: float = Field(ge=0, description="Storage GB per unit of allocation.")
    min_allocation: float = Field(0.0, ge=0, le=1)
    max_allocation: float = Field(1.0, ge=0, le=1)
    restart_minutes: float = Field(5.0, ge=0, description="Downtime of one restart.")
    prior_usd_per_hour: float | None = Field(
        None, ge=0,
        description="Expected $/h at allocation 1.0 before any telemetry (the forecast's 'prior' step); "
        "unset: the simulation profile's base_hourly_usd.",
    )
    enabled: bool = True
    simulation: SimulationProfile = SimulationProfile()

    @property
    def prior_expected_usd_per_hour(self) -> float:
        """The prior $/h at full allocation: ``prior_usd_per_hour``, else the simulation profile's base."""
        return float(self.prior_usd_per_hour if self.prior_usd_per_hour is not None else self.simulation.base_hourly_usd)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not PROTOCOL_NAME_PATTERN.fullmatch(value):
            raise ValueError(
                f"protocol name {value!r} must match {PROTOCOL_NAME_PATTERN.pattern} "
                "(lower-case letters, digits, '_' or '-')"
            )
        return value

    @model_validator(mode="after")
    def _min_le_max(self) -> ProtocolSpec:
        if self.max_allocation < self.min_allocation:
            raise ValueError(
                f"max_allocation ({self.max_allocation}) is below min_allocation ({self.min_allocation})"
            )
        return self

    def resource_vector(self) -> dict[str, float]:
        return {
            "cpu_cores": self.cpu_cores,
            "memory_gb": self.memory_gb,
            "bandwidth_mbps": self.bandwidth_mbps,
            "storage_gb": self.storage_gb,
        }


# earnopt's own footprint on the host (service + Dagster webserver/daemon/code servers + the 15-minute
# tick), measured by benchmarks/footprint.py; see ReservedResources.
DEFAULT_RESERVED_CPU_CORES = 0.05
DEFAULT_RESERVED_MEMORY_GB = 1.2


class ReservedResources(_Strict):
    """What earnopt itself takes from the host, kept out of the allocator's reach so the earning apps
    are never planned onto CPU and memory that earnopt is using. Defaults are the measured footprint
    (``benchmarks/footprint.py`` prints a suggested block for the machine it runs on)."""

    cpu_cores: float = Field(DEFAULT_RESERVED_CPU_CORES, ge=0, description="Cores kept for earnopt (mean use incl. ticks).")
    memory_gb: float = Field(DEFAULT_RESERVED_MEMORY_GB, ge=0, description="Memory GB kept for earnopt (idle stack RSS).")

    def vector(self) -> dict[str, float]:
        """In the allocator's resource keys (bandwidth and storage are not reserved)."""
        return {"cpu_cores": self.cpu_cores, "memory_gb": self.memory_gb, "bandwidth_mbps": 0.0, "storage_gb": 0.0}


class HostSpec(_Strict):
    """The machine's totals and earnopt's own ``reserved`` share of them.

    The allocator plans over :meth:`available` = totals - reserved; features and the UI's machine view
    keep using :meth:`totals` (the whole machine).
    """

    device: str = Field("local", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    timezone: str = "UTC"
    cpu_cores: float = Field(gt=0)
    memory_gb: float = Field(gt=0)
    bandwidth_mbps: float = Field(gt=0)
    storage_gb: float = Field(gt=0)
    reserved: ReservedResources = ReservedResources()

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _reserve_leaves_room(self) -> HostSpec:
        for resource in ("cpu_cores", "memory_gb"):
            reserved, total = getattr(self.reserved, resource), getattr(self, resource)
            if reserved >= total:
                raise ValueError(
                    f"reserved.{resource} ({reserved:g}) must be below the host's {resource} ({total:g}): "
                    "nothing would be left for the protocols"
                )
        return self

    def totals(self) -> dict[str, float]:
        """The whole machine."""
        return {
            "cpu_cores": self.cpu_cores,
            "memory_gb": self.memory_gb,
            "bandwidth_mbps": self.bandwidth_mbps,
            "storage_gb": self.storage_gb,
        }

    def available(self) -> dict[str, float]:
        """What the allocator may hand to protocols: ``totals() - reserved`` per resource."""
        reserved = self.reserved.vector()
        return {resource: total - reserved[resource] for resource, total in self.totals().items()}


class AlertChannel(_Strict):
    """One notification target: an Apprise URL (``ntfy://``, ``tgram://``, ``json://``, ``mailtos://``,
    ``gotify://``, ``pover://``, ``matrixs://``, ``slack://``, ``discord://``, ...; README "Alert channels"),
    or an http(s) URL with a legacy ``kind`` (webhook, ntfy, slack, discord) that is mapped onto one.
    ``min_severity`` filters what it receives (info < warning < critical). A plain string is the URL."""

    url: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")
    kind: Literal["webhook", "ntfy", "slack", "discord"] | None = None
    min_severity: Literal["info", "warning", "critical"] = "warning"

    @model_validator(mode="before")
    @classmethod
    def _url_only(cls, value: object) -> object:
        return {"url": value} if isinstance(value, str) else value


class AlertSettings(_Strict):
    """Alert rules, cooldown, detector and delivery settings (formulas in docs/MODELS.md)."""

    channels: list[AlertChannel] = []
    cooldown_minutes: float = Field(
        60, ge=0, description="A (device, protocol, rule) that fired within this many minutes before is not re-notified."
    )
    earnings_drop_threshold: float = Field(0.30, gt=0, lt=1, description="Fractional drop vs same-hour median.")
    earnings_drop_critical: float = Field(0.60, gt=0, le=1, description="Drop at or above which the alert is critical.")
    allocation_elasticity: float = Field(
        0.6, ge=0, le=1, description="Earnings scale ~ allocation**elasticity; baselines are rescaled by it."
    )
    baseline_level_band: float = Field(
        0.25, ge=0, lt=1, description="How far the 24 h level factor may move the same-hour baseline (0 = off)."
    )
    failure_threshold: int = Field(5, ge=1, description="Connection failures in one hour that fire an alert.")
    failure_critical_threshold: int = Field(10, ge=1, description="Failures in one hour that make the alert critical.")
    silent_hours: int = Field(2, ge=1, description="Hours without telemetry that count as a connection failure.")
    silent_lag_hours: float = Field(
        3.0, ge=0, description="A series with no row for more than this many hours behind the wall clock raises a critical 'silent' alert (0 = off)."
    )
    resource_zscore_threshold: float = Field(3.0, gt=0, description="z-score vs the trailing 7 days that fires.")
    resource_share_tolerance: float = Field(
        0.25, ge=0, description="Usage above (1 + tolerance) x allocated share fires the resource rule."
    )
    degradation_ratio: float = Field(0.70, gt=0, lt=1)
    degradation_hours: int = Field(3, ge=1)
    resolve_after_hours: int = Field(3, ge=1)
    contamination: float = Field(
        0.002, gt=0, le=0.5, description="IsolationForest share of outliers (0.005 keeps its alerts >50 % precise)."
    )
    score_hours: int = Field(48, ge=1, description="Recent hours the anomalies asset scores each run.")
    evaluation_hours: int = Field(24, ge=1, description="Recent hours the alerts asset evaluates each run.")
    delivery_timeout_seconds: float = Field(3.0, gt=0, le=60, description="Timeout of one HTTP attempt.")
    delivery_attempts: int = Field(3, ge=1, le=10)
    delivery_backoff_seconds: float = Field(0.5, ge=0, le=30, description="First retry delay; doubles each retry.")
    delivery_budget_seconds: float = Field(10.0, gt=0, le=300, description="Bound on one alert's delivery to one channel.")

    @model_validator(mode="after")
    def _critical_beyond_warning(self) -> AlertSettings:
        if self.earnings_drop_critical < self.earnings_drop_threshold:
            raise ValueError(
                f"earnings_drop_critical ({self.earnings_drop_critical}) is below "
                f"earnings_drop_threshold ({self.earnings_drop_threshold})"
            )
        if self.failure_critical_threshold < self.failure_threshold:
            raise ValueError(
                f"failure_critical_threshold ({self.failure_critical_threshold}) is below "
                f"failure_threshold ({self.failure_threshold})"
            )
        return self


class AllocationSettings(_Strict):
    """Decision rule for reallocating (see docs/MODELS.md)."""

    min_improvement_pct: float = Field(10.0, ge=0)
    min_net_benefit_usd_per_hour: float = Field(0.50, ge=0)
    max_change_l1: float = Field(2.0, gt=0, description="Largest total |new - current| allowed in one step.")
    change_threshold: float = Field(0.05, ge=0, le=1, description="A change above this restarts the protocol.")
    fixed_restart_cost_usd: float = Field(0.0, ge=0)
    change_penalty: float = Field(0.0, ge=0, description="L1 friction weight in the objective ($/h per unit).")
    horizon_minutes: float = Field(15.0, gt=0)
    expected_earnings: Literal["next_hour", "mean_24h"] = "mean_24h"
    risk_aversion: float = Field(
        0.84, ge=0, le=3,
        description="lambda: plan on mean - lambda x downside of each forecast (downside from its 80 % interval) and "
        "reallocate only when the gain beats the restart cost by lambda standard deviations; 0 = risk-neutral, "
        "0.84 = moderate (about 80 % probability that the move pays), 1.64 = cautious (95 %).",
    )


class TrainingResources(_Strict):
    """How much of the host one retraining may take: it runs beside the earning apps and the 15-minute
    tick, so it runs niced with TensorFlow's thread pools capped (the model's ``train_threads`` and
    ``train_nice`` come from here)."""

    threads: int = Field(1, ge=1, le=64, description="TensorFlow intra- and inter-op threads of one training run.")
    nice: int = Field(10, ge=0, le=19, description="Niceness increment of the training worker (os.nice).")


PROMETHEUS_FIELDS: tuple[str, ...] = (
    "balance_usd", "earnings_usd", "cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb",
    "allocation", "connection_failures", "latency_ms",
)


class CashPilotName(_Strict):
    """A protocol's names in CashPilot: ``platform`` labels the balance, ``service`` the container metrics."""

    platform: str = Field(min_length=1, max_length=128)
    service: str | None = Field(None, min_length=1, max_length=128, description="Defaults to the platform name.")


class PrometheusSource(_Strict):
    """Telemetry pulled from a Prometheus server with ``query_range`` at a 1 h step (docs/DATA.md).

    Credentials never come from the YAML: ``auth: bearer`` reads ``EARNOPT_PROMETHEUS_TOKEN``,
    ``auth: basic`` reads ``EARNOPT_PROMETHEUS_USER`` and ``EARNOPT_PROMETHEUS_PASSWORD``.
    """

    url: str = Field(description="Base URL, e.g. http://127.0.0.1:9090 (no user:password@).")
    auth: Literal["none", "bearer", "basic"] = "none"
    preset: Literal["cashpilot"] | None = None
    cashpilot: dict[str, str | CashPilotName] = Field(
        default_factory=dict, description="Catalog protocol -> CashPilot platform name (or {platform, service})."
    )
    queries: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Catalog protocol -> telemetry field -> PromQL (overrides the preset per field)."
    )
    device: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Device of series without the device label (default host.device).")
    device_label: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Series label that names earnopt's device.")
    devices: dict[str, str] = Field(default_factory=dict, description="Label value -> earnopt device name.")
    backfill_days: int = Field(30, ge=1, le=3660, description="History pulled by the first run.")
    page_hours: int = Field(720, ge=1, le=10000, description="Hours per query_range request (bounded responses).")
    timeout_seconds: float = Field(10.0, gt=0, le=300, description="Timeout of one HTTP request.")

    @field_validator("url")
    @classmethod
    def _plain_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://\S+", value):
            raise ValueError("must be an http(s) URL, e.g. http://127.0.0.1:9090")
        if "@" in value.split("/", 3)[2]:  # the value is not echoed: it would carry the password
            raise ValueError("must not carry credentials (user:password@): use auth: basic with EARNOPT_PROMETHEUS_USER / EARNOPT_PROMETHEUS_PASSWORD")
        return value

    @model_validator(mode="after")
    def _fields_known(self) -> PrometheusSource:
        for protocol, fields in self.queries.items():
            unknown = sorted(set(fields) - set(PROMETHEUS_FIELDS))
            if unknown:
                raise ValueError(f"queries.{protocol}: unknown telemetry field(s) {', '.join(unknown)}; expected {', '.join(PROMETHEUS_FIELDS)}")
            if "balance_usd" in fields and "earnings_usd" in fields:
                raise ValueError(f"queries.{protocol}: give balance_usd or earnings_usd, not both")
        if self.cashpilot and self.preset != "cashpilot":
            raise ValueError("cashpilot: names need preset: cashpilot")
        return self


class BalanceResampling(_Strict):
    """How cumulative balance polls become hourly earnings (docs/DATA.md, every source)."""

    imputed_after_hours: float = Field(2.0, gt=0, description="Hours touched by a longer poll gap are marked imputed.")
    max_gap_hours: float = Field(6.0, gt=0, description="Hours touched by a longer poll gap stay missing.")


class SourcesSettings(_Strict):
    """Telemetry sources besides the landing directory. Prometheus is off unless configured."""

    prometheus: PrometheusSource | None = None
    balance: BalanceResampling = BalanceResampling()


class ContainerRef(_Strict):
    """Which Docker container runs a protocol: by container ``name`` or by a ``label`` ``key=value``."""

    name: str | None = Field(None, pattern=r"^/?[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}=[A-Za-z0-9_.-]{1,128}$")

    @model_validator(mode="after")
    def _exactly_one(self) -> ContainerRef:
        if (self.name is None) == (self.label is None):
            raise ValueError("give exactly one of name or label (e.g. label: earnopt.protocol=honeygain)")
        return self


class ActuationSettings(_Strict):
    """Whether and how earnopt applies its plans to the protocols' Docker containers (README "Letting earnopt act").

    ``off`` (default) touches nothing; ``dry_run`` inspects and records what it would do; ``apply`` changes
    limits (``docker update``), restarts, stops and starts. ``EARNOPT_ACTUATION_MODE`` overrides ``mode``.
    Only containers mapped in ``containers`` (or, with ``label_key``, labelled ``<label_key>=<protocol>``) are touched.
    """

    mode: Literal["off", "dry_run", "apply"] = "off"
    max_restarts_per_day: int = Field(3, ge=0, le=96, description="Restarts per protocol per rolling 24 h.")
    stop_timeout_seconds: int = Field(10, ge=0, le=300, description="Grace period of a stop or restart.")
    label_key: str | None = Field(
        "earnopt.protocol", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="Containers labelled <label_key>=<protocol> are mapped to that protocol (null = only explicit containers).",
    )
    containers: dict[str, ContainerRef] = Field(default_factory=dict, description="Protocol -> container (overrides label_key).")
    docker_host: str | None = Field(None, pattern=r"^(unix|tcp|ssh)://\S+$", description="Docker endpoint (default: DOCKER_HOST or the local socket).")

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false


class Catalog(_Strict):
    host: HostSpec
    protocols: list[ProtocolSpec] = Field(min_length=1)
    alerts: AlertSettings = AlertSettings()
    sources: SourcesSettings = SourcesSettings()
    allocation: AllocationSettings = AllocationSettings()
    training: TrainingResources = TrainingResources()
    actuation: ActuationSettings = ActuationSettings()
    source: str | None = Field(None, description="File the catalog was loaded from.")

    @model_validator(mode="after")
    def _unique_names(self) -> Catalog:
        seen: set[str] = set()
        for index, protocol in enumerate(self.protocols):
            if protocol.name in seen:
                raise ValueError(f"protocols.{index}.name: duplicate protocol name {protocol.name!r}")
            seen.add(protocol.name)
        unknown = sorted(set(self.actuation.containers) - seen)
        if unknown:
            raise ValueError(f"actuation.containers: unknown protocol(s) {', '.join(unknown)}")
        return self

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.protocols]

    @property
    def enabled(self) -> list[ProtocolSpec]:
        return [p for p in self.protocols if p.enabled]

    @property
    def enabled_names(self) -> list[str]:
        return [p.name for p in self.protocols if p.enabled]

    def require(self, name: object) -> ProtocolSpec:
        """Return the protocol spec for ``name`` or raise :class:`UnknownProtocolError`.

        This is the gate every outside protocol name goes through before it touches a path or a query.
        """
        if isinstance(name, str):
            for protocol in self.protocols:
                if protocol.name == name:
                    return protocol
        raise UnknownProtocolError(name, self.names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"invalid catalog {path}:"]
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "<root>"
        lines.append(f"  {field}: {error['msg']}")
    return "\n".join(lines)


def parse_catalog(data: object, source: str | Path = "<memory>") -> Catalog:
    """Validate an already-parsed catalog mapping."""
    path = Path(source)
    if not isinstance(data, dict):
        raise CatalogError(f"invalid catalog {path}: top level must be a mapping with 'host' and 'protocols'")
    try:
        return Catalog.model_validate({**data, "source": str(path)})
    except ValidationError as exc:
        raise CatalogError(_format_validation_error(path, exc)) from None


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load and validate a catalog file.

    Resolution order: the explicit ``path``; ``$EARNOPT_CATALOG``; ``data/catalog.yaml`` in the project.
    """
    resolved = Path(path) if path is not None else Path(os.environ.get("EARNOPT_CATALOG") or default_catalog_path())
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {resolved}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog {resolved} is not valid YAML: {exc}") from None
    return parse_catalog(data, resolved)

"""The wire contract of the earnopt ML service: request and response models (pydantic v2).

The service (``earnopt_assets.service``) validates requests and serialises responses with these classes, and the
client (``earnopt_assets.client``) parses responses into the same classes, so a field renamed here breaks the
client's tests, not the orchestrator in production. Only pydantic and the standard library are imported here:
the client must stay importable without FastAPI, DuckDB, Dagster or TensorFlow.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, WithJsonSchema, field_validator, model_validator

PROTOCOL_EXAMPLE = "honeygain"
# The schema states what the validators enforce (#13 §5). A protocol name as the catalog spells it
# (earnopt_assets.catalog.PROTOCOL_NAME_PATTERN); the service narrows it to the catalog's names (an
# enum) when it builds its OpenAPI document.
PROTOCOL_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
ProtocolName = Annotated[str, Field(pattern=PROTOCOL_NAME_PATTERN)]
# Start of an hour: minutes, seconds and fractions zero; an offset, when given, in whole hours.
WHOLE_HOUR_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:00:00(\.0+)?(Z|[+-][0-9]{2}:00)?$"
WholeHour = Annotated[datetime, WithJsonSchema({"type": "string", "format": "date-time", "pattern": WHOLE_HOUR_PATTERN,
                                                "description": "Start of the UTC hour the row covers (naive = UTC)."})]
Share = Annotated[float, Field(ge=0, le=1)]
EarningsSeries = Annotated[
    list[Annotated[float, Field(ge=0)]],
    WithJsonSchema({"type": "array", "items": {"type": "number", "minimum": 0},
                    "oneOf": [{"minItems": 1, "maxItems": 1}, {"minItems": 24, "maxItems": 24}],
                    "description": "1 value or 24 hourly values, $/h, each >= 0."}),
]
UNIQUE_HOURS = (" No two rows share (device, ts); JSON Schema cannot state uniqueness of one field of the items, "
                "so this is said here and enforced with a 422 naming the row.")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _utc(value: datetime) -> datetime:
    """Naive timestamps are UTC; aware ones are converted to UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ----------------------------------------------------------------------------- telemetry


class TelemetryRow(_Model):
    """One hour of one protocol's telemetry, as the collectors report it (same columns as ``raw_earnings``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "ts": "2026-11-25T16:00:00Z",
                    "earnings_usd": 0.0031,
                    "cpu_cores": 0.2,
                    "memory_gb": 0.22,
                    "bandwidth_mbps": 8.5,
                    "storage_gb": 0.2,
                    "allocation": 0.9,
                    "connection_failures": 0,
                    "latency_ms": 41.0,
                }
            ]
        },
    )

    ts: WholeHour = Field(description="Start of the UTC hour the row covers (naive = UTC).")
    device: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Reporting device; default the catalog's host.")
    protocol: ProtocolName | None = Field(None, description="Optional; must equal the protocol in the path when given.")
    earnings_usd: float = Field(ge=0, le=1_000, description="USD earned in the hour.")
    cpu_cores: float = Field(ge=0, le=4096, description="CPU cores used.")
    memory_gb: float = Field(ge=0, le=65_536, description="Memory used, GB.")
    bandwidth_mbps: float = Field(ge=0, le=1_000_000, description="Bandwidth used, Mbps.")
    storage_gb: float = Field(ge=0, le=1e9, description="Storage used, GB.")
    allocation: float = Field(ge=0, le=1, description="Allocation share in [0, 1].")
    connection_failures: int = Field(ge=0, le=1_000_000, description="Connection failures in the hour.")
    latency_ms: float | None = Field(None, ge=0, le=600_000, description="Median latency, ms (optional).")

    @field_validator("ts")
    @classmethod
    def _whole_utc_hour(cls, value: datetime) -> datetime:
        value = _utc(value)
        if value.minute or value.second or value.microsecond:
            raise ValueError("ts must be the start of an hour (minutes and seconds zero)")
        return value

    @field_validator("earnings_usd", "cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb", "allocation", "latency_ms")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


def _check_rows(rows: list[TelemetryRow]) -> list[TelemetryRow]:
    seen: set[tuple[str | None, datetime]] = set()
    for index, row in enumerate(rows):
        key = (row.device, row.ts)
        if key in seen:
            raise ValueError(f"row {index}: duplicate hour {row.ts.isoformat()}")
        seen.add(key)
    return rows


# ----------------------------------------------------------------------------- predictions


class PredictionRequest(_Model):
    """Recent hourly telemetry of one protocol. The model needs ``required_history_hours`` (see
    ``GET /models``): 24 hours plus the week of history the lag features read."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"rows": ["<192+ TelemetryRow objects>"], "fallback": True}]})

    rows: list[TelemetryRow] = Field(min_length=24, max_length=24 * 90, description="Hourly telemetry, any order." + UNIQUE_HOURS)
    fallback: StrictBool = Field(False, description="Serve the seasonal-naive baseline instead of a 503 when no model is usable.")

    _rows_unique = field_validator("rows")(classmethod(lambda cls, rows: _check_rows(rows)))


class HourlyPrediction(_Model):
    ts: datetime = Field(description="UTC hour predicted.")
    earnings_usd: float = Field(ge=0, description="Predicted USD for that hour.")
    lower_80: float | None = Field(None, ge=0, description="80 % prediction interval, lower bound (USD); null when the source has no scored residuals.")
    upper_80: float | None = Field(None, ge=0, description="80 % prediction interval, upper bound (USD).")
    lower_95: float | None = Field(None, ge=0, description="95 % prediction interval, lower bound (USD).")
    upper_95: float | None = Field(None, ge=0, description="95 % prediction interval, upper bound (USD).")


class PredictionResponse(_Model):
    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "protocol": "honeygain",
                    "device": "local",
                    "model_version": "20261125T160000Z-3f2a",
                    "source": "lstm",
                    "reason": "lstm holdout MAPE 8.10% < 15% target, best of 5 candidates; next mstl 9.02%",
                    "below_target": False,
                    "generated_at": "2026-11-25T17:00:03Z",
                    "predictions": [{"ts": "2026-11-25T17:00:00Z", "earnings_usd": 0.0029, "lower_80": 0.0025, "upper_80": 0.0033, "lower_95": 0.0022, "upper_95": 0.0036}],
                    "total_usd": 0.071,
                }
            ]
        },
    )

    protocol: str
    device: str
    model_version: str | None = Field(description="Version of the LSTM champion used; null when a statistical source answered.")
    source: str = Field(
        description="The forecaster that answered, by name: 'lstm' (the champion), 'lstm_base_only' (the champion's statistical "
        "base; its correction has weight 0), 'mstl', 'ets', 'seasonal_naive_24', 'seasonal_naive_168' (the protocol's best "
        "statistical candidate), or 'seasonal_naive_fallback' (nothing decided or usable)."
    )
    reason: str | None = Field(None, description="Why this source serves the protocol (from its latest training run's scores), or why the fallback was used.")
    below_target: bool = Field(False, description="The source's holdout MAPE misses the target (served because no candidate meets it).")
    generated_at: datetime
    predictions: list[HourlyPrediction] = Field(min_length=24, max_length=24)
    total_usd: float = Field(ge=0, description="Sum of the 24 predictions.")
    cached: bool = Field(False, description="Served from the prediction cache (same model version, rows and fallback).")


# ----------------------------------------------------------------------------- evaluation


class StoredForecastResponse(_Model):
    """The newest forecast the pipeline stored for one protocol (``earnings_forecast`` rows, as written)."""

    protocol: str
    device: str
    forecast_time: datetime = Field(description="UTC wall clock when the pipeline made the forecast.")
    origin_ts: datetime = Field(description="Last observed hour the forecast starts from.")
    source: str = Field(description="Forecaster that produced the rows (lstm, mstl, ets, seasonal_naive_168, ...).")
    model_version: str | None = Field(None, description="LSTM champion version when source is lstm.")
    reason: str | None = Field(None, description="Why this source serves the protocol.")
    below_target: bool = Field(False, description="The source's holdout MAPE misses the target.")
    predictions: list[HourlyPrediction] = Field(description="One row per target hour, with the stored intervals (null when not scored).")
    total_usd: float = Field(ge=0, description="Sum of the predictions.")


class EvaluationRequest(_Model):
    """Telemetry with known outcomes; the stored model is scored on it (no training happens)."""

    rows: list[TelemetryRow] = Field(min_length=24, max_length=24 * 365, description="Hourly telemetry with actual earnings." + UNIQUE_HOURS)

    _rows_unique = field_validator("rows")(classmethod(lambda cls, rows: _check_rows(rows)))


class EvaluationResponse(_Model):
    protocol: str
    model_version: str | None
    metrics: dict[str, float] = Field(description="Error metrics of the stored model on the posted data (e.g. mape, mae, rmse).")
    n_samples: int = Field(ge=0, description="Forecast targets scored.")
    passed_mape_check: bool | None = Field(None, description="Whether MAPE is within the model's threshold.")
    mape_threshold: float | None = None
    details: dict[str, Any] = Field(default_factory=dict, description="Extra evaluation output of the predictor.")


# ----------------------------------------------------------------------------- training and runs


class TrainingOptions(_Model):
    """Overrides of the ``earnings_model`` run config (unset = the asset's defaults)."""

    epochs: int | None = Field(None, ge=1, le=500, description="Max epochs (early stopping may end sooner).")
    batch_size: int | None = Field(None, ge=1, le=4096)
    sequence_length: int | None = Field(None, ge=2, le=168, description="Hours per input window.")
    lstm_units_1: int | None = Field(None, ge=1, le=1024)
    lstm_units_2: int | None = Field(None, ge=1, le=1024)
    patience: int | None = Field(None, ge=1, le=100)
    min_holdout_days: int | None = Field(None, ge=1, le=60)
    mape_target_pct: float | None = Field(None, gt=0, le=1000, description="Target of the blocking MAPE check (percent).")

    def run_config(self) -> dict[str, Any]:
        """Dagster run config for the training job: the asset's config, plus the check's target."""
        values = self.model_dump(exclude_none=True)
        check_target = values.get("mape_target_pct")
        config: dict[str, Any] = {"ops": {}}
        if values:
            config["ops"]["earnings_model"] = {"config": values}
        if check_target is not None:
            config["ops"]["earnings_model_mape_within_target"] = {"config": {"mape_target_pct": check_target}}
        return config if config["ops"] else {}


class TrainRequest(_Model):
    """Optional extra telemetry and training options. Posted rows are written to the landing directory and
    go through ingestion's validation (raw_earnings, earnings_features) before the model trains. Omit
    everything to train on what the warehouse holds with the asset's default config."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"options": {"epochs": 60}}, {}]})

    rows: list[TelemetryRow] = Field(default_factory=list, max_length=24 * 365 * 2, description="Extra telemetry to ingest first." + UNIQUE_HOURS)
    options: TrainingOptions = Field(default_factory=TrainingOptions, description="Run config overrides.")

    _rows_unique = field_validator("rows")(classmethod(lambda cls, rows: _check_rows(rows)))


RunStatus = Literal["LAUNCHING", "QUEUED", "NOT_STARTED", "STARTING", "STARTED", "SUCCESS", "FAILURE", "CANCELING", "CANCELED", "MANAGED"]


class TrainResponse(_Model):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"run_id": "0b8a3f6e-3c1c-4d4a-9e55-6f1f4c0f6a51", "protocol": "honeygain", "status": "LAUNCHING", "status_url": "/runs/0b8a3f6e-3c1c-4d4a-9e55-6f1f4c0f6a51", "job": "retrain_earnings_models", "partition": "honeygain", "ingested_rows": 0}]},
    )

    run_id: str = Field(description="Dagster run id; poll GET /runs/{run_id}.")
    protocol: str
    job: str
    partition: str
    status: RunStatus
    status_url: str
    ingested_rows: int = Field(0, ge=0, description="Posted rows written to the landing directory.")
    launched_via: Literal["instance", "graphql"]


class RunStatusResponse(_Model):
    run_id: str
    status: RunStatus
    finished: bool = Field(description="True once the run reached SUCCESS, FAILURE or CANCELED.")
    job: str | None = None
    partition: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    detail: str | None = Field(None, description="Why a launch failed, or what the run waits for.")


# ----------------------------------------------------------------------------- models


class ModelInfo(_Model):
    protocol: str
    version: str | None
    trained_at: datetime | None
    loaded: bool = Field(description="Loaded in this service process.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Validation metrics saved with the model.")
    passed_mape_check: bool | None = Field(None, description="Result of the model's MAPE check at training time.")
    required_history_hours: int | None = Field(None, description="Hours of telemetry /predict/earnings needs.")
    error: str | None = Field(None, description="Why the model could not be loaded.")


class ModelsResponse(_Model):
    models: list[ModelInfo]
    expected: list[str] = Field(description="Enabled protocols of the catalog.")


class ModelMetricsResponse(_Model):
    protocol: str
    version: str | None
    trained_at: datetime | None
    metrics: dict[str, Any]
    passed_mape_check: bool | None
    history: dict[str, Any] = Field(default_factory=dict, description="Training history summary (epochs, best/final losses).")


# ----------------------------------------------------------------------------- allocation


class AllocationRequest(_Model):
    """Current allocations plus earnings predictions. Protocols left out of ``earnings`` (all of them when
    it is omitted or ``use_latest_forecasts`` is set) take the newest ``forecasts`` rows, or a
    seasonal-naive forecast from ``raw_earnings``, exactly like the allocation asset."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "current_allocations": {"honeygain": 0.5, "storj": 0.6, "akash": 0.0},
                    "earnings": {"honeygain": [0.003] * 24, "storj": [0.006], "akash": [0.04]},
                    "earnings_basis": "current_allocation",
                }
            ],
            # the validator's "not both": non-empty earnings together with use_latest_forecasts=true
            "not": {"required": ["earnings", "use_latest_forecasts"],
                    "properties": {"earnings": {"type": "object", "minProperties": 1}, "use_latest_forecasts": {"const": True}}},
        },
    )

    current_allocations: dict[ProtocolName, Share] = Field(
        default_factory=dict,
        description="Protocol -> allocation share in [0, 1] running now; omitted protocols use the stored allocation_state (or the catalog's initial allocation).",
    )
    earnings: dict[ProtocolName, EarningsSeries] | None = Field(
        None, description="Protocol -> predicted $/h: 1 value or 24 hourly values (the mean or the next hour is used, per the catalog)."
    )
    earnings_basis: Literal["current_allocation", "full_allocation"] = Field(
        "current_allocation",
        description="'current_allocation': the predictions are what the protocol earns at its current share (like /predict/earnings); 'full_allocation': at share 1.0.",
    )
    use_latest_forecasts: StrictBool = Field(False, description="Ignore nothing: read every protocol's predictions from the forecasts table.")

    @field_validator("current_allocations")
    @classmethod
    def _shares(cls, value: dict[str, float]) -> dict[str, float]:
        for name, share in value.items():
            if not (math.isfinite(share) and 0.0 <= share <= 1.0):
                raise ValueError(f"{name}: allocation must be a finite number in [0, 1], got {share!r}")
        return value

    @field_validator("earnings")
    @classmethod
    def _predictions(cls, value: dict[str, list[float]] | None) -> dict[str, list[float]] | None:
        if value is None:
            return value
        for name, series in value.items():
            if len(series) not in (1, 24):
                raise ValueError(f"{name}: give 1 value or 24 hourly values, got {len(series)}")
            for hour, amount in enumerate(series):
                if not (math.isfinite(amount) and amount >= 0):
                    raise ValueError(f"{name}[{hour}]: predicted earnings must be finite and >= 0, got {amount!r}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> AllocationRequest:
        if self.earnings and self.use_latest_forecasts:
            raise ValueError("give either earnings or use_latest_forecasts, not both")
        return self


class CostItem(_Model):
    protocol: str
    current: float
    new: float
    change: float = Field(description="|new - current|")
    restarts: bool = Field(description="True when the change exceeds the restart threshold.")
    downtime_minutes: float
    downtime_cost_usd: float
    fixed_cost_usd: float
    total_usd: float


class ReallocationAnalysis(_Model):
    decision: Literal["reallocate", "keep"]
    forced_reason: str | None = None
    criteria: dict[str, bool] = Field(description="Each rule of the decision and whether it held.")
    reasons: list[str]
    current_usd_per_hour: float
    proposed_usd_per_hour: float
    improvement_usd_per_hour: float
    improvement_pct: float | None = Field(description="null when both current and proposed earn 0; 1e308 stands for +inf.")
    change_l1: float
    reallocation_cost_usd: float
    amortised_cost_usd_per_hour: float
    net_benefit_usd_per_hour: float
    restarted: list[str]
    cost_items: list[CostItem]
    thresholds: dict[str, float]


class ProtocolAllocation(_Model):
    protocol: str
    current: float
    optimal: float | None = Field(description="The solver's optimum (null if it found none).")
    recommended: float = Field(description="What should run after this cycle (optimal if applied, else current).")
    action: Literal["restart", "adjust", "keep"]
    reason: str
    degraded: bool
    potential_usd_per_hour: float = Field(description="Expected $/h at allocation 1.0 (p_i).")
    expected_current_usd_per_hour: float
    expected_optimal_usd_per_hour: float
    response_beta: float
    earnings_source: str


class AllocationResponse(_Model):
    allocations: dict[str, float] = Field(description="Recommended allocation per protocol (what should run).")
    optimal_allocations: dict[str, float] = Field(description="The solver's optimum, whatever the decision.")
    status: Literal["applied", "kept", "rejected"] = Field(description="applied = move to the optimum; kept = rule says stay; rejected = checks failed.")
    utilisation_pct: dict[str, float] = Field(description="Percent of each resource the protocols may use (host total minus earnopt's own reserve, catalog host.reserved) that the recommendation uses.")
    optimal_utilisation_pct: dict[str, float]
    solver_status: str
    solver: str | None = None
    solve_seconds: float
    checks: dict[str, bool] = Field(description="Plan checks (solver optimal, constraints satisfied).")
    diagnosis: list[str] = Field(default_factory=list)
    protocols: list[ProtocolAllocation]
    analysis: ReallocationAnalysis
    notes: list[str] = Field(default_factory=list)


# ----------------------------------------------------------------------------- anomalies


class DetectionRow(TelemetryRow):
    """A telemetry row that names its protocol (anomaly scoring mixes protocols)."""

    protocol: ProtocolName = Field(description="Protocol of the row (required here).")


class AnomalyDetectionRequest(_Model):
    """Telemetry rows of any protocols to score with the stored anomaly detector."""

    rows: list[DetectionRow] = Field(min_length=1, max_length=24 * 90 * 20, description="Rows; `protocol` is required on each.")

    @model_validator(mode="after")
    def _protocol_on_rows(self) -> AnomalyDetectionRequest:
        for index, row in enumerate(self.rows):
            if row.protocol is None:
                raise ValueError(f"rows.{index}.protocol: required for anomaly detection")
        return self


class AnomalyScore(_Model):
    device: str
    protocol: str
    ts: datetime
    score: float = Field(description="Anomaly score; higher is more anomalous.")
    is_anomaly: bool
    features: dict[str, float | None] = Field(default_factory=dict, description="Detection features of the hour (null = not computable yet, scored as neutral).")


class AnomalyDetectionResponse(_Model):
    detector_version: str | None
    threshold: float | None
    scored: int
    anomalies: int
    results: list[AnomalyScore]


class Alert(_Model):
    """One unresolved alert of the anomaly pipeline (table ``alerts``)."""

    id: str
    device: str
    protocol: str
    rule: str = Field(description="Rule or detector that fired (e.g. earnings_drop, offline, anomaly_score).")
    severity: Literal["info", "warning", "critical"]
    hour: datetime = Field(description="UTC hour the alert is about.")
    message: str
    evidence: dict[str, Any] = Field(default_factory=dict, description="What the rule saw (JSON).")
    status: Literal["open", "acknowledged"]
    created_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None = None


class AlertsResponse(_Model):
    available: bool = Field(description="False when the anomaly pipeline has not produced an alerts table yet.")
    alerts: list[Alert]


# ----------------------------------------------------------------------------- health


class ComponentHealth(_Model):
    status: Literal["ok", "degraded", "down"]
    detail: str


class HealthResponse(_Model):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"status": "ok", "models_loaded": 12, "models_expected": 12, "missing_models": [], "warehouse": {"status": "ok", "detail": "read-only connection ok"}, "telemetry_age_seconds": 1800.0, "allocation_age_seconds": 600.0, "checked_at": "2026-11-25T17:00:00Z", "version": "0.1.0"}]},
    )

    status: Literal["ok", "degraded", "down"]
    models_loaded: int
    models_expected: int
    missing_models: list[str]
    anomaly_detector_loaded: bool = False
    warehouse: ComponentHealth
    telemetry_age_seconds: float | None
    allocation_age_seconds: float | None
    checked_at: datetime
    version: str


# ----------------------------------------------------------------------------- errors and the document


class ProblemFieldError(BaseModel):
    field: str = Field(description="Dotted path of the offending field (e.g. body.rows.3.ts).")
    message: str
    type: str | None = None


class Problem(BaseModel):
    """RFC 7807 problem details: every error response of the service (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI naming the problem kind (stable).")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    instance: str | None = Field(None, description="Path of the request.")
    errors: list[ProblemFieldError] | None = Field(None, description="Every invalid field (422 only).")


PROBLEM_MEDIA_TYPE = "application/problem+json"


def state_the_contract(spec: dict[str, Any], protocol_names: list[str]) -> dict[str, Any]:
    """Make the OpenAPI document say what the service enforces (in place; returns ``spec``).

    - a string with the protocol-name pattern, and every ``{protocol}`` path parameter, becomes an ``enum``
      of the catalog's names; a ``patternProperties`` keyed by protocol name becomes ``propertyNames``
      (the same enum) with ``additionalProperties`` (no other key is valid);
    - every 4xx/5xx response (and the ``default``) is ``application/problem+json`` with the ``Problem``
      schema instead of FastAPI's ``application/json``.
    """
    from pydantic.json_schema import models_json_schema

    names = sorted(protocol_names)
    _, extra = models_json_schema([(Problem, "serialization")], ref_template="#/components/schemas/{model}")
    spec.setdefault("components", {}).setdefault("schemas", {}).update(extra.get("$defs", {}))

    def narrow(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("pattern") == PROTOCOL_NAME_PATTERN and node.get("type") == "string":
                node = {k: v for k, v in node.items() if k != "pattern"} | {"enum": names}
            pattern_properties = node.get("patternProperties")
            if isinstance(pattern_properties, dict) and set(pattern_properties) == {PROTOCOL_NAME_PATTERN}:
                node = {k: v for k, v in node.items() if k != "patternProperties"}
                node["propertyNames"] = {"enum": names}
                node["additionalProperties"] = pattern_properties[PROTOCOL_NAME_PATTERN]
            return {k: narrow(v) for k, v in node.items()}
        if isinstance(node, list):
            return [narrow(v) for v in node]
        return node

    narrowed = narrow(dict(spec))
    spec.clear()
    spec.update(narrowed)
    problem = {"schema": {"$ref": "#/components/schemas/Problem"}}
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") == "protocol":
                    parameter["schema"] = {**{k: v for k, v in parameter.get("schema", {}).items() if k != "pattern"}, "type": "string", "enum": names}
            if "requestBody" in operation:  # a body that is not JSON at all never reaches the validators
                operation.setdefault("responses", {}).setdefault("400", {"description": "The body is not parseable JSON."})
            for code, response in operation.get("responses", {}).items():
                if code == "default" or str(code)[:1] in ("4", "5"):
                    response["content"] = {PROBLEM_MEDIA_TYPE: problem}
    return spec

"""Service settings, read from ``EARNOPT_*`` environment variables (pydantic-settings).

==============================  =====================================================================
variable                        meaning
==============================  =====================================================================
EARNOPT_DATA_DIR                data directory (models, warehouse, landing); default ``<repo>/data``
EARNOPT_CATALOG                 catalog YAML; default ``$EARNOPT_DATA_DIR/catalog.yaml`` or the repo's
EARNOPT_API_TOKEN               bearer token for mutating endpoints (``/train``); unset = they answer 403
EARNOPT_CORS_ORIGINS            JSON list of allowed browser origins; default localhost only
EARNOPT_MAX_BODY_BYTES          largest accepted request body (413 above it); default 8 MiB
EARNOPT_DAGSTER_HOME            Dagster instance directory for training runs; default ``$DAGSTER_HOME``
                                or ``$EARNOPT_DATA_DIR/dagster_home``
EARNOPT_DAGSTER_GRAPHQL_URL     if set, training runs are submitted to this Dagster webserver instead
EARNOPT_TRAIN_JOB               Dagster job that materializes one ``earnings_model`` partition
EARNOPT_MODEL_RELOAD_SECONDS    how often a request may re-check a model's files for a newer version
EARNOPT_PREDICTION_CACHE_SIZE   forecasts kept in memory for identical requests (0 = no cache)
EARNOPT_PREDICT_BATCH_MAX       most forecast requests run as one batched LSTM recursion (default 64)
EARNOPT_PREDICT_BATCH_WAIT_MS   how long an idle batcher holds a request for others to join (default 0:
                                requests arriving while a batch computes form the next one)
EARNOPT_PREDICT_TIMEOUT_SECONDS longest a request waits for its batched forecast (503 after it)
==============================  =====================================================================
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from earnopt_assets.settings import EarnoptPaths, default_catalog_path, default_data_dir

LOCALHOST_ORIGINS: tuple[str, ...] = (
    "http://localhost",
    "http://localhost:3000",
    "http://localhost:8000",
    "http://127.0.0.1",
    "http://127.0.0.1:3000",
    "http://127.0.0.1:8000",
)


class ServiceSettings(BaseSettings):
    """Everything the service needs to know; every field has an ``EARNOPT_`` environment variable."""

    model_config = SettingsConfigDict(env_prefix="EARNOPT_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="earnopt data directory.")
    catalog: Path = Field(default_factory=default_catalog_path, description="Protocol catalog YAML file.")
    api_token: SecretStr | None = Field(
        None, description="Bearer token for mutating endpoints. Unset disables them (403)."
    )
    cors_origins: list[str] = Field(
        default_factory=lambda: list(LOCALHOST_ORIGINS),
        description="Browser origins allowed by CORS. Never '*': credentials are allowed.",
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest accepted request body.")
    dagster_home: Path | None = Field(
        None, description="Dagster instance directory; default $DAGSTER_HOME or <data_dir>/dagster_home."
    )
    dagster_graphql_url: str | None = Field(
        None, description="Dagster webserver URL (e.g. http://127.0.0.1:3000) to submit training runs to."
    )
    train_job: str = Field("retrain_earnings_models", description="Job materializing one earnings_model partition.")
    workspace_module: str = Field("earnopt_assets.definitions", description="Module holding the Definitions.")
    model_reload_seconds: float = Field(5.0, ge=0, description="Min seconds between model freshness checks.")
    prediction_cache_size: int = Field(2048, ge=0, description="Forecasts kept in the LRU cache (0 disables it).")
    predict_batch_max: int = Field(64, ge=1, le=64, description="Most forecast requests computed as one batch.")
    # 0: holding an idle batcher's first request (a 1 ms poll) cost 0.4-0.7 ms of server CPU per request and
    # 2 ms of latency, for batches that rarely formed below saturation (measured, #13 §6); under load the
    # requests that arrive while a batch computes still form the next batch.
    predict_batch_wait_ms: float = Field(0.0, ge=0, le=1000, description="Max wait of an idle batcher for more requests.")
    predict_timeout_seconds: float = Field(30.0, gt=0, description="Longest wait for a batched forecast (503 after).")
    keep_alive_seconds: int = Field(75, ge=1, le=3600, description="Idle keep-alive of client connections (uvicorn).")
    log_level: str = Field("info", description="Log level of the service's request log.")

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard(cls, origins: list[str]) -> list[str]:
        if "*" in origins:
            raise ValueError("cors_origins must list explicit origins; '*' is refused because credentials are allowed")
        return origins

    @property
    def paths(self) -> EarnoptPaths:
        return EarnoptPaths(Path(self.data_dir))

    @property
    def resolved_dagster_home(self) -> Path:
        if self.dagster_home is not None:
            return Path(self.dagster_home)
        env = os.environ.get("DAGSTER_HOME")
        return Path(env) if env else self.paths.dagster_home

    def token_value(self) -> str | None:
        return self.api_token.get_secret_value() if self.api_token is not None else None

"""Where earnopt keeps its state. Everything lives under one data directory (default ``<repo>/data``).

``EARNOPT_DATA_DIR`` moves the whole tree (tests point it at a tmp dir); ``EARNOPT_CATALOG`` picks
another catalog file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    return Path(os.environ.get("EARNOPT_DATA_DIR") or PROJECT_ROOT / "data")


def default_catalog_path() -> Path:
    env = os.environ.get("EARNOPT_CATALOG")
    if env:
        return Path(env)
    in_data = default_data_dir() / "catalog.yaml"
    return in_data if in_data.exists() else PROJECT_ROOT / "data" / "catalog.yaml"


@dataclass(frozen=True)
class EarnoptPaths:
    """All the on-disk locations derived from one data directory."""

    data_dir: Path

    @classmethod
    def from_env(cls) -> EarnoptPaths:
        return cls(default_data_dir())

    @property
    def warehouse(self) -> Path:
        return self.data_dir / "earnopt.duckdb"

    @property
    def landing(self) -> Path:
        return self.data_dir / "landing"

    @property
    def rejected(self) -> Path:
        return self.landing / "rejected"

    @property
    def archive(self) -> Path:
        return self.data_dir / "archive"

    @property
    def models(self) -> Path:
        return self.data_dir / "models"

    @property
    def allocation_dir(self) -> Path:
        return self.data_dir / "allocation"

    @property
    def latest_plan(self) -> Path:
        return self.allocation_dir / "latest.json"

    @property
    def features_dir(self) -> Path:
        """Per-protocol Parquet snapshots of ``earnings_features`` (``<protocol>.parquet``), written
        atomically by the features asset so training reads them without opening the warehouse."""
        return self.data_dir / "features"

    @property
    def labels(self) -> Path:
        """Anomaly labels written by the simulator, kept apart from landing so they are never ingested."""
        return self.data_dir / "labels"

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster_home"

    def ensure(self) -> EarnoptPaths:
        for directory in (self.landing, self.features_dir, self.rejected, self.archive, self.models, self.allocation_dir, self.labels):
            directory.mkdir(parents=True, exist_ok=True)
        return self

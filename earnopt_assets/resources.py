"""Dagster resources: where the data lives and the warehouse connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from earnopt_assets.catalog import Catalog, load_catalog
from earnopt_assets.settings import EarnoptPaths, default_catalog_path, default_data_dir


class EarnoptResource(dg.ConfigurableResource):
    """The project's data directory and catalog. Tests point both at a tmp dir."""

    data_dir: str
    catalog_path: str

    @property
    def paths(self) -> EarnoptPaths:
        return EarnoptPaths(Path(self.data_dir)).ensure()

    def catalog(self) -> Catalog:
        return load_catalog(self.catalog_path)


class WarehouseResource(DuckDBResource):
    """dagster-duckdb's resource, but the connection is closed even when the block raises.

    Upstream's ``get_connection`` only closes after a clean exit, so an exception leaves the file locked
    until garbage collection and the next writer process fails on the lock.
    """

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        upstream = super().get_connection()
        conn = upstream.__enter__()
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        upstream.__exit__(None, None, None)


def default_resources() -> dict[str, object]:
    """Resources on embedded defaults, resolved from the environment when definitions load."""
    paths = EarnoptPaths(default_data_dir())
    return {
        "earnopt": EarnoptResource(data_dir=str(paths.data_dir), catalog_path=str(default_catalog_path())),
        "duckdb": WarehouseResource(database=str(paths.warehouse)),
    }


def resources_for(data_dir, catalog_path) -> dict[str, object]:
    """Resources for an explicit data dir and catalog (tests, benchmarks)."""
    paths = EarnoptPaths(Path(data_dir))
    return {
        "earnopt": EarnoptResource(data_dir=str(paths.data_dir), catalog_path=str(catalog_path)),
        "duckdb": WarehouseResource(database=str(paths.warehouse)),
    }

"""The catalog's ``host.reserved`` block: earnopt's own footprint, kept out of the allocator's reach."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from earnopt_assets.catalog import (
    DEFAULT_RESERVED_CPU_CORES,
    DEFAULT_RESERVED_MEMORY_GB,
    CatalogError,
    load_catalog,
    parse_catalog,
)

from earnopt_assets_tests.conftest import DEFAULT_CATALOG


def _raw() -> dict:
    return yaml.safe_load(DEFAULT_CATALOG.read_text())


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_shipped_catalog_reserves_earnopts_footprint():
    catalog = load_catalog(DEFAULT_CATALOG)
    reserved = catalog.host.reserved
    assert 0 < reserved.cpu_cores < catalog.host.cpu_cores
    assert 0 < reserved.memory_gb < catalog.host.memory_gb
    available, totals = catalog.host.available(), catalog.host.totals()
    assert available["cpu_cores"] == pytest.approx(totals["cpu_cores"] - reserved.cpu_cores)
    assert available["memory_gb"] == pytest.approx(totals["memory_gb"] - reserved.memory_gb)
    # only CPU and memory are reserved
    assert available["bandwidth_mbps"] == totals["bandwidth_mbps"]
    assert available["storage_gb"] == totals["storage_gb"]


def test_a_catalog_without_the_block_gets_the_measured_defaults():
    raw = _raw()
    raw["host"].pop("reserved", None)
    host = parse_catalog(raw).host
    assert (host.reserved.cpu_cores, host.reserved.memory_gb) == (DEFAULT_RESERVED_CPU_CORES, DEFAULT_RESERVED_MEMORY_GB)


def test_a_zero_reserve_gives_the_allocator_the_whole_machine():
    raw = _raw()
    raw["host"]["reserved"] = {"cpu_cores": 0, "memory_gb": 0}
    host = parse_catalog(raw).host
    assert host.available() == host.totals()


@pytest.mark.parametrize(
    ("reserved", "field", "message"),
    [
        ({"cpu_cores": -0.5}, "host.reserved.cpu_cores", "greater than or equal to 0"),
        ({"memory_gb": "lots"}, "host.reserved.memory_gb", "valid number"),
        ({"disk_gb": 1}, "host.reserved.disk_gb", "Extra inputs are not permitted"),
        ({"cpu_cores": 8}, "host", "reserved.cpu_cores (8) must be below the host's cpu_cores (8)"),
        ({"memory_gb": 32}, "host", "reserved.memory_gb (32) must be below the host's memory_gb (16)"),
    ],
)
def test_invalid_reserve_names_the_field(tmp_path, reserved, field, message):
    raw = _raw()
    raw["host"]["reserved"] = reserved
    with pytest.raises(CatalogError) as excinfo:
        load_catalog(_write(tmp_path, raw))
    text = str(excinfo.value)
    assert f"  {field}: " in text
    assert message in text

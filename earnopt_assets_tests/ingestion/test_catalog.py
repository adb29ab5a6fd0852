"""Catalog loading: the default catalog is valid and realistic; each invalid catalog names its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from earnopt_assets.catalog import CatalogError, UnknownProtocolError, load_catalog
from earnopt_assets_tests.conftest import DEFAULT_CATALOG


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(DEFAULT_CATALOG.read_text())
    mutate(raw)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_default_catalog_is_realistic():
    catalog = load_catalog(DEFAULT_CATALOG)
    assert len(catalog.protocols) >= 10
    kinds = {p.kind.value for p in catalog.protocols}
    assert kinds == {"bandwidth", "storage", "compute"}
    for p in catalog.protocols:
        if p.kind.value == "bandwidth":
            assert 0.128 <= p.memory_gb <= 0.768 and p.cpu_cores <= 1 and p.bandwidth_mbps > 0
        if p.name == "storj":
            assert p.storage_gb >= 550 and p.memory_gb >= 2
        if p.kind.value == "compute":
            assert p.cpu_cores >= 1
        assert 0 <= p.min_allocation <= p.max_allocation <= 1


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda raw: raw["protocols"][0].update(min_allocation=0.8, max_allocation=0.2), "protocols.0", "max_allocation"),
        (lambda raw: raw["protocols"][1].update(memory_gb=-1), "protocols.1.memory_gb", "greater than or equal to 0"),
        (lambda raw: raw["protocols"][2].update(name=raw["protocols"][0]["name"]), "protocols.2.name", "duplicate protocol name"),
        (lambda raw: raw["protocols"][3].update(kind="mining"), "protocols.3.kind", "bandwidth"),
        (lambda raw: raw["host"].update(cpu_cores=-4), "host.cpu_cores", "greater than 0"),
        (lambda raw: raw["protocols"][0].update(max_allocation=1.5), "protocols.0.max_allocation", "less than or equal to 1"),
    ],
    ids=["max-below-min", "negative-resource", "duplicate-name", "unknown-kind", "negative-host-total", "max-above-1"],
)
def test_invalid_catalog_names_the_field(tmp_path, mutate, field, message):
    path = _write(tmp_path, mutate)
    with pytest.raises(CatalogError) as excinfo:
        load_catalog(path)
    text = str(excinfo.value)
    assert str(path) in text
    assert field in text
    assert message in text


def test_unreadable_and_non_yaml_catalogs(tmp_path):
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("host: [unclosed")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(bad)
    bad.write_text("- just a list")
    with pytest.raises(CatalogError, match="top level must be a mapping"):
        load_catalog(bad)


def test_env_var_selects_another_catalog(small_catalog_path, monkeypatch):
    catalog = load_catalog()
    assert sorted(catalog.names) == ["akash", "honeygain", "storj"]
    assert catalog.source == str(small_catalog_path)
    other = _write(small_catalog_path.parent.parent, lambda raw: raw.update(protocols=raw["protocols"][:1]))
    monkeypatch.setenv("EARNOPT_CATALOG", str(other))
    assert load_catalog().names == ["honeygain"]


def test_require_is_the_gate_for_outside_names(small_catalog):
    assert small_catalog.require("storj").kind.value == "storage"
    for name in ("../etc/passwd", "nope", 3, None):
        with pytest.raises(UnknownProtocolError) as excinfo:
            small_catalog.require(name)
        assert "the catalog knows" in str(excinfo.value)
    assert "storj" in small_catalog and "x" not in small_catalog

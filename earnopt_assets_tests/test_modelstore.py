"""ModelStore: staging + atomic rename, CURRENT only moves on promote, pruning never removes CURRENT."""

from __future__ import annotations

import pytest

from earnopt_assets.modelstore import MANIFEST_FILE, ModelStore, ModelStoreError


def _save(store: ModelStore, name: str, payload: bytes) -> str:
    with store.stage(name) as staged:
        (staged / "weights.bin").write_bytes(payload)
    return staged.version


def test_staged_version_lands_in_versions_without_moving_current(tmp_path):
    store = ModelStore(tmp_path, "lstm")
    first = _save(store, "storj", b"one")
    assert store.versions("storj") == [first]
    assert store.current("storj") is None  # a saved challenger is not served
    store.promote("storj", first)
    assert store.current("storj") == first
    second = _save(store, "storj", b"two")
    assert store.current("storj") == first and store.versions("storj") == [first, second]
    assert (store.path("storj", second) / "weights.bin").read_bytes() == b"two"
    assert store.verify("storj", second)["files"]["weights.bin"]["bytes"] == 3
    store.promote("storj", second)
    assert store.current("storj") == second
    assert store.names() == ["storj"]


def test_a_failing_writer_leaves_nothing_behind(tmp_path):
    store = ModelStore(tmp_path, "lstm")
    kept = _save(store, "storj", b"good")
    store.promote("storj", kept)
    with pytest.raises(OSError, match="disk full"):
        with store.stage("storj") as staged:
            (staged / "weights.bin").write_bytes(b"half")
            raise OSError("disk full (simulated)")
    assert [p.name for p in (tmp_path / "lstm" / "storj" / "versions").iterdir()] == [kept]
    assert store.current("storj") == kept


def test_prune_keeps_the_newest_and_never_current(tmp_path):
    store = ModelStore(tmp_path, "lstm")
    saved = [_save(store, "storj", bytes([i])) for i in range(5)]
    store.promote("storj", saved[0])
    removed = store.prune("storj", keep=2)
    assert sorted(removed) == saved[1:3]
    assert store.versions("storj") == [saved[0], *saved[-2:]]
    assert store.current("storj") == saved[0]


def test_promote_refuses_a_corrupt_or_missing_version(tmp_path):
    store = ModelStore(tmp_path, "lstm")
    version = _save(store, "storj", b"payload")
    (store.path("storj", version) / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(ModelStoreError, match="sha256"):
        store.promote("storj", version)
    (store.path("storj", version) / MANIFEST_FILE).unlink()
    with pytest.raises(ModelStoreError, match="manifest"):
        store.verify("storj", version)
    with pytest.raises(ModelStoreError, match="does not exist"):
        store.promote("storj", "20990101T000000000Z-deadbeef")
    assert store.current("storj") is None


@pytest.mark.parametrize("bad", ["../etc", "Storj", "", "a/b"])
def test_unsafe_names_never_touch_a_path(tmp_path, bad):
    store = ModelStore(tmp_path, "lstm")
    with pytest.raises(ValueError):
        store.model_dir(bad)
    with pytest.raises(ValueError):
        store.path("storj", "../../x" if bad else bad)
    with pytest.raises(ValueError):
        ModelStore(tmp_path, "../up")


def test_an_unsafe_current_pointer_reads_as_no_model(tmp_path):
    store = ModelStore(tmp_path, "lstm")
    _save(store, "storj", b"x")
    (tmp_path / "lstm" / "storj" / "CURRENT").write_text("../../etc\n")
    assert store.current("storj") is None and store.fingerprint("storj") is None


def test_fingerprint_changes_when_current_moves(tmp_path):
    store = ModelStore(tmp_path, "lstm")
    a, b = _save(store, "storj", b"a"), _save(store, "storj", b"b")
    store.promote("storj", a)
    before = store.fingerprint("storj")
    store.promote("storj", b)
    assert store.fingerprint("storj") != before and store.fingerprint("storj")[0] == b

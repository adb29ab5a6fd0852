"""One versioned model store for every saved model (the forecasting LSTMs and the anomaly detector).

Layout::

    <root>/<kind>/<name>/CURRENT                     version name of the model in service (one line)
    <root>/<kind>/<name>/versions/<version>/         the model's files + MANIFEST.json (sha256 of each file)
    <root>/<kind>/<name>/versions/.staging-*/        a version being written (never read)

Life of a version: :meth:`ModelStore.stage` hands out a staging directory; when the ``with`` block ends
without an exception the store writes ``MANIFEST.json`` (sha256 and size of every file) and renames the
directory into ``versions/<version>`` in one ``os.rename``. Nothing points at it yet: a saved challenger
sits in ``versions/`` and ``CURRENT`` moves only through :meth:`ModelStore.promote` (an atomic replace of
the pointer file), which is a separate decision (governance). A crash at any point leaves ``CURRENT``
naming a complete version. :meth:`ModelStore.prune` keeps the newest versions and never removes the one
``CURRENT`` names.

Version names are ``YYYYmmddTHHMMSSfffZ-<8 hex>`` (UTC save time + a random suffix), so sorting by name
sorts by age. Names of kinds, models and versions are checked against a safe alphabet before they touch a
path. Nothing here unpickles anything: the store only moves files and checks their digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from earnopt_assets.atomic import atomic_write_json, atomic_write_text, pid_alive

CURRENT_FILE = "CURRENT"
MANIFEST_FILE = "MANIFEST.json"
VERSIONS_DIR = "versions"
STAGING_PREFIX = ".staging-"
DEFAULT_KEEP = 3
# A staging directory older than this belongs to a crashed writer (a save takes seconds), so prune may remove it.
STALE_STAGING_SECONDS = 3600.0
SAFE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
VERSION_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,79}$")


def remove_dead_writers_staging(versions: Path) -> list[Path]:
    """Remove staging directories whose writer died (``.staging-<pid>-*`` with no such process): a
    SIGKILL mid-save cannot clean up after itself, the next save does."""
    removed = []
    for staging in versions.glob(STAGING_PREFIX + "*"):
        pid = staging.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


class ModelStoreError(RuntimeError):
    """A store operation on a missing, unsafe or corrupt version. The message names the path."""


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:
        raise ValueError(f"invalid {what} {value!r}; must match {pattern.pattern}")
    return value


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_last_stamp: datetime | None = None


def new_version_name(now: datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSfffZ-<random>``; names sort in save order, so pruning keeps the newest. Two saves in
    the same millisecond of one process get consecutive milliseconds (the random part alone would not sort)."""
    global _last_stamp
    stamp = now or datetime.now(UTC)
    stamp = stamp.replace(microsecond=stamp.microsecond // 1000 * 1000)
    if now is None:
        if _last_stamp is not None and stamp <= _last_stamp:
            stamp = _last_stamp + timedelta(milliseconds=1)
        _last_stamp = stamp
    return f"{stamp.strftime('%Y%m%dT%H%M%S')}{stamp.microsecond // 1000:03d}Z-{secrets.token_hex(4)}"


class StagedVersion(os.PathLike):
    """The staging directory handed out by :meth:`ModelStore.stage` (path-like); after the ``with`` block
    ``version`` and ``path`` name the final version directory."""

    def __init__(self, path: Path, version: str) -> None:
        self.path = path
        self.version = version

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def __repr__(self) -> str:
        return f"StagedVersion({str(self.path)!r})"


class ModelStore:
    """Versioned models of one ``kind`` (e.g. ``"lstm"``, ``"anomaly"``) under ``root``; see the module docstring."""

    def __init__(self, root: str | Path, kind: str) -> None:
        self.root = Path(root)
        self.kind = _check(SAFE_NAME, kind, "model kind")
        self.base = self.root / kind

    # ----------------------------------------------------------------- paths

    def model_dir(self, name: str) -> Path:
        return self.base / _check(SAFE_NAME, name, "model name")

    def path(self, name: str, version: str) -> Path:
        """Directory of ``version`` of model ``name`` (the name is checked, existence is not)."""
        return self.model_dir(name) / VERSIONS_DIR / _check(VERSION_NAME, version, "model version")

    def names(self) -> list[str]:
        """Models that have a ``CURRENT`` pointer or at least one saved version."""
        if not self.base.is_dir():
            return []
        return sorted(p.name for p in self.base.iterdir() if p.is_dir() and SAFE_NAME.fullmatch(p.name) and (p / VERSIONS_DIR).is_dir())

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name``, oldest first (staging directories excluded)."""
        directory = self.model_dir(name) / VERSIONS_DIR
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".") and VERSION_NAME.fullmatch(p.name))

    def current(self, name: str) -> str | None:
        """The version ``CURRENT`` names, or None (no pointer yet, or an unsafe/empty one)."""
        pointer = self.model_dir(name) / CURRENT_FILE
        try:
            version = pointer.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        if not version or not VERSION_NAME.fullmatch(version) or ".." in version:
            return None
        return version

    def current_path(self, name: str) -> Path | None:
        version = self.current(name)
        return None if version is None else self.path(name, version)

    def fingerprint(self, name: str) -> tuple[Any, ...] | None:
        """Changes whenever ``CURRENT`` moves (or is rewritten); None without a current version. Cheap: two stats."""
        pointer = self.model_dir(name) / CURRENT_FILE
        version = self.current(name)
        if version is None:
            return None
        try:
            stat = pointer.stat()
        except OSError:
            return None
        try:
            manifest_mtime = (self.path(name, version) / MANIFEST_FILE).stat().st_mtime_ns
        except OSError:
            manifest_mtime = None
        return (version, stat.st_mtime_ns, manifest_mtime)

    # ----------------------------------------------------------------- writing

    @contextmanager
    def stage(self, name: str, version: str | None = None, mutable: tuple[str, ...] = ()) -> Iterator[StagedVersion]:
        """Write a new version: ``with store.stage(name) as staged: (staged / "file").write_bytes(...)``.

        On a clean exit ``MANIFEST.json`` is written and the directory renamed into ``versions/`` (one
        ``os.rename``); ``staged.version`` / ``staged.path`` then name it. On an exception the staging
        directory is removed and nothing else changes. ``CURRENT`` is never moved here (see :meth:`promote`).
        Files named in ``mutable`` (e.g. a metadata file a later governance step annotates) are listed in the
        manifest but only checked for presence.
        """
        versions = self.model_dir(name) / VERSIONS_DIR
        versions.mkdir(parents=True, exist_ok=True)
        final_name = _check(VERSION_NAME, version, "model version") if version is not None else new_version_name()
        remove_dead_writers_staging(versions)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=versions))
        staged = StagedVersion(staging, final_name)
        try:
            yield staged
            self._write_manifest(staging, name, final_name, mutable)
            final = versions / final_name
            if final.exists():
                raise ModelStoreError(f"{final} already exists; versions are never overwritten")
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        staged.path = final

    @staticmethod
    def _write_manifest(directory: Path, name: str, version: str, mutable: tuple[str, ...] = ()) -> None:
        files = {
            str(p.relative_to(directory)): (
                {"mutable": True} if str(p.relative_to(directory)) in mutable else {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            )
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != MANIFEST_FILE
        }
        atomic_write_json(
            directory / MANIFEST_FILE,
            {"name": name, "version": version, "saved_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "files": files},
        )

    def promote(self, name: str, version: str) -> None:
        """Point ``CURRENT`` at ``version`` (atomic replace) after checking it is complete and intact."""
        self.verify(name, version)
        atomic_write_text(self.model_dir(name) / CURRENT_FILE, version + "\n")

    def verify(self, name: str, version: str) -> dict[str, Any]:
        """Check ``version`` exists and every file matches ``MANIFEST.json``; return the manifest."""
        directory = self.path(name, version)
        if not directory.is_dir():
            raise ModelStoreError(f"{self.kind}/{name}: version {version!r} does not exist ({directory})")
        manifest_path = directory / MANIFEST_FILE
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelStoreError(f"{manifest_path}: missing or unreadable manifest ({exc})") from None
        if manifest.get("name") != name or manifest.get("version") != version:
            raise ModelStoreError(f"{manifest_path}: written for {manifest.get('name')!r} {manifest.get('version')!r}, not {name!r} {version!r}")
        for relative, entry in files.items():
            path = directory / relative
            if not path.is_file():
                raise ModelStoreError(f"{self.kind}/{name} {version}: file {relative} listed in the manifest is missing")
            if not entry.get("mutable") and sha256_file(path) != entry.get("sha256"):
                raise ModelStoreError(f"{self.kind}/{name} {version}: {relative} does not match its sha256 in {MANIFEST_FILE}")
        return manifest

    def prune(self, name: str, keep: int = DEFAULT_KEEP) -> list[str]:
        """Remove all but the newest ``keep`` versions, never the one ``CURRENT`` names; also staging
        directories of crashed writers (older than an hour). Returns the removed version names."""
        if keep < 1:
            raise ValueError("keep must be >= 1")
        versions_dir = self.model_dir(name) / VERSIONS_DIR
        if not versions_dir.is_dir():
            return []
        now = time.time()
        for stale in versions_dir.glob(STAGING_PREFIX + "*"):
            try:
                if now - stale.stat().st_mtime > STALE_STAGING_SECONDS:
                    shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                pass
        current = self.current(name)
        removed = []
        for old in self.versions(name)[:-keep]:
            if old != current:
                shutil.rmtree(versions_dir / old, ignore_errors=True)
                removed.append(old)
        return removed

"""Training runs launched from the API, executed by Dagster — never in a request thread.

Mechanism (instance mode, the default): ``POST /train/{protocol}`` picks a run id, writes a launch
record ``<DAGSTER_HOME>/earnopt_launches/<run_id>.json`` and starts a detached worker process
(``python -m earnopt_assets.service.launch_worker``). The worker

1. if rows were posted (already written to the landing directory): materializes ``raw_earnings`` and
   ``earnings_features`` with ``dagster asset materialize`` on the same instance, so the rows pass
   ingestion's validation before training reads them;
2. runs ``dagster job launch -j <train job> --run-id <run_id> --tags {"dagster/partition": protocol}``,
   which submits the run through the instance's run coordinator: with ``dagster dev`` / the daemon
   running (deploy/dagster.yaml) the run is queued and honours the pool limits; with a
   ``DefaultRunCoordinator`` instance it starts at once. The run, its logs and its materialization show up
   in the Dagster UI like any other.

``GET /runs/{run_id}`` reads the run from the instance; before the run exists it reports the launch
record's state (``LAUNCHING``, or ``FAILURE`` with the worker's error).

GraphQL mode (``EARNOPT_DAGSTER_GRAPHQL_URL`` set): the run is submitted to a running Dagster webserver
with ``dagster_graphql.DagsterGraphQLClient`` and its status read back from there.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from earnopt_assets.atomic import atomic_write_json
from earnopt_assets.settings import PROJECT_ROOT

log = logging.getLogger("earnopt.service")

TERMINAL_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
LAUNCH_RECORD_DIR = "earnopt_launches"
INGEST_SELECTION = "raw_earnings,earnings_features"


class RunNotFound(LookupError):
    pass


@dataclass(frozen=True)
class RunState:
    run_id: str
    status: str
    job: str | None = None
    partition: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    detail: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


def _epoch_to_dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value else None


class InstanceTrainLauncher:
    """Launches training runs on the Dagster instance in ``dagster_home`` through a detached worker."""

    mode = "instance"

    def __init__(
        self,
        dagster_home: Path,
        *,
        job_name: str,
        workspace_module: str,
        data_dir: Path,
        catalog_path: Path,
    ) -> None:
        self.dagster_home = Path(dagster_home)
        self.job_name = job_name
        self.workspace_module = workspace_module
        self.data_dir = Path(data_dir)
        self.catalog_path = Path(catalog_path)
        self._instance: Any = None
        self._lock = threading.Lock()
        self._processes: dict[str, subprocess.Popen] = {}

    @property
    def records_dir(self) -> Path:
        return self.dagster_home / LAUNCH_RECORD_DIR

    def _record_path(self, run_id: str) -> Path:
        return self.records_dir / f"{run_id}.json"

    def instance(self) -> Any:
        import dagster as dg

        with self._lock:
            if self._instance is None:
                self.dagster_home.mkdir(parents=True, exist_ok=True)
                self._instance = dg.DagsterInstance.from_config(str(self.dagster_home))
            return self._instance

    def launch(self, protocol: str, *, ingest_first: bool, run_config: dict[str, Any] | None = None) -> str:
        """Start the worker and return the run id the Dagster run will carry."""
        # create (and migrate) a fresh instance's storage here first: a worker and a GET /runs opening
        # the same new SQLite file at once race on its schema (alembic_version UNIQUE) and one fails
        self.instance()
        run_id = str(uuid.uuid4())
        self.records_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "run_id": run_id,
            "protocol": protocol,
            "job": self.job_name,
            "partition": protocol,
            "state": "LAUNCHING",
            "ingest_first": ingest_first,
            "run_config": run_config or {},
            "workspace_module": self.workspace_module,
            "created_at": datetime.now(UTC).isoformat(),
            "detail": None,
        }
        atomic_write_json(self._record_path(run_id), record)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(self.dagster_home),
            "EARNOPT_DATA_DIR": str(self.data_dir),
            "EARNOPT_CATALOG": str(self.catalog_path),
        }
        log_path = self.records_dir / f"{run_id}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "earnopt_assets.service.launch_worker", str(self._record_path(run_id))],
                cwd=str(PROJECT_ROOT),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a service restart must not kill a training run
            )
        self._processes[run_id] = process
        log.info("launched training worker pid=%d run_id=%s protocol=%s", process.pid, run_id, protocol)
        return run_id

    def _failure_detail(self, run_id: str) -> str | None:
        """The failed steps' error messages (and failed blocking checks) from the run's event log."""
        from dagster import DagsterEventType

        messages: list[str] = []
        try:
            for record in self.instance().all_logs(run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}):
                event = record.dagster_event
                if event is None:
                    continue
                data = event.event_specific_data
                error = getattr(data, "error", None)
                while error is not None and getattr(error, "cause", None) is not None:
                    error = error.cause  # the user's exception, not Dagster's wrapper
                text = error.message.strip() if error is not None else (event.message or record.user_message or "")
                step = f"{event.step_key}: " if event.step_key else ""
                if text:
                    messages.append(step + text.splitlines()[0][:500])
        except Exception:  # detail is best effort; the status itself is authoritative
            return None
        return "; ".join(dict.fromkeys(messages)) or None

    def _read_record(self, run_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._record_path(run_id).read_text())
        except (OSError, ValueError):
            return None

    def status(self, run_id: str) -> RunState:
        run = self.instance().get_run_by_id(run_id)
        record = self._read_record(run_id)
        if run is not None:
            stats = None
            try:
                stats = self.instance().get_run_stats(run_id)
            except Exception:  # stats are a nicety
                stats = None
            detail = (record or {}).get("detail")
            if run.status.value == "FAILURE":
                detail = self._failure_detail(run_id) or detail
            return RunState(
                run_id=run_id,
                status=run.status.value,
                job=run.job_name,
                partition=run.tags.get("dagster/partition"),
                start_time=_epoch_to_dt(getattr(stats, "start_time", None)),
                end_time=_epoch_to_dt(getattr(stats, "end_time", None)),
                detail=detail,
            )
        if record is None:
            raise RunNotFound(run_id)
        state = record.get("state", "LAUNCHING")
        detail = record.get("detail")
        process = self._processes.get(run_id)
        if state == "LAUNCHED":
            state, detail = "FAILURE", "the run was launched but the Dagster instance no longer has it"
        elif state not in TERMINAL_STATUSES and process is not None and process.poll() is not None:
            # The worker is gone but neither the run nor a failure was recorded: it crashed.
            state = "FAILURE"
            detail = f"launch worker exited with code {process.returncode}; see {self.records_dir / (run_id + '.log')}"
        return RunState(run_id=run_id, status=state, job=record.get("job"), partition=record.get("partition"), detail=detail)

    def close(self) -> None:
        with self._lock:
            if self._instance is not None:
                self._instance.dispose()
                self._instance = None
        # Workers are detached on purpose (training outlives a restart); just reap finished ones.
        for process in self._processes.values():
            process.poll()


class GraphQLTrainLauncher:
    """Submits training runs to a running Dagster webserver over its GraphQL API."""

    mode = "graphql"

    def __init__(self, url: str, *, job_name: str) -> None:
        from urllib.parse import urlparse

        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"dagster_graphql_url must be http(s)://host[:port], got {url!r}")
        self.url = url
        self.job_name = job_name
        self._host = parsed.hostname
        self._port = parsed.port
        self._https = parsed.scheme == "https"

    def _client(self) -> Any:
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient(self._host, port_number=self._port, use_https=self._https, timeout=10)

    def launch(self, protocol: str, *, ingest_first: bool, run_config: dict[str, Any] | None = None) -> str:
        if ingest_first:
            raise ValueError("posted rows need instance mode; in GraphQL mode land files and let ingestion run")
        return self._client().submit_job_execution(
            self.job_name, run_config=run_config or {}, tags={"dagster/partition": protocol, "earnopt/launched_by": "api"}
        )

    def status(self, run_id: str) -> RunState:
        from dagster_graphql import DagsterGraphQLClientError

        try:
            status = self._client().get_run_status(run_id)
        except DagsterGraphQLClientError as exc:
            if "RunNotFoundError" in str(exc) or "not found" in str(exc).lower():
                raise RunNotFound(run_id) from None
            raise
        return RunState(run_id=run_id, status=status.value, job=self.job_name)

    def close(self) -> None:
        pass

"""Training through Dagster: launch a run for one ``earnings_model`` partition, then poll it."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, status
from fastapi.concurrency import run_in_threadpool

from earnopt_assets.atomic import atomic_write_text
from earnopt_assets.service.auth import require_token
from earnopt_assets.service.errors import NotFound, ServiceUnavailable, UnprocessableData
from earnopt_assets.service.routers.deps import get_state
from earnopt_assets.service.routers.predict import ProtocolPath
from earnopt_assets.service.schemas import RunStatusResponse, TrainRequest, TrainResponse
from earnopt_assets.service.state import ServiceState
from earnopt_assets.service.telemetry import rows_to_jsonl
from earnopt_assets.service.training import RunNotFound

router = APIRouter(tags=["training"])

AUTH_RESPONSES = {
    401: {"description": "Missing or wrong bearer token."},
    403: {"description": "Mutating endpoints are disabled (no EARNOPT_API_TOKEN configured)."},
    404: {"description": "Unknown protocol."},
    422: {"description": "Invalid posted rows."},
    503: {"description": "The Dagster instance or webserver could not take the run."},
}


@router.post(
    "/train/{protocol}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TrainResponse,
    responses=AUTH_RESPONSES,
    dependencies=[Depends(require_token)],
)
async def train(
    protocol: ProtocolPath,
    request: Annotated[TrainRequest | None, Body()] = None,
    state: ServiceState = Depends(get_state),
) -> TrainResponse:
    """Start a Dagster run that materializes ``earnings_model[protocol]``; answers 202 with the run id.

    Training data is what the warehouse holds. Posted ``rows`` are first written to the landing directory
    as a JSON Lines file and ingested by the normal ingestion assets (same validation, quarantine and
    de-duplication) before the model trains. Requires ``Authorization: Bearer <EARNOPT_API_TOKEN>``.
    """
    spec = state.protocol(protocol)
    if not spec.enabled:
        raise UnprocessableData(f"protocol {protocol} is disabled in the catalog", field="protocol")
    rows = request.rows if request is not None else []
    if rows and state.launcher.mode != "instance":
        raise UnprocessableData("posted rows need instance mode (EARNOPT_DAGSTER_GRAPHQL_URL unset)", field="rows")
    if rows:
        text = rows_to_jsonl(rows, protocol=protocol, default_device=state.catalog.host.device)
        landing = state.paths.landing
        landing.mkdir(parents=True, exist_ok=True)
        # The protocol is catalog-checked; the file name adds only a fresh uuid.
        await run_in_threadpool(atomic_write_text, landing / f"api-{protocol}-{uuid.uuid4().hex}.jsonl", text)
    try:
        run_config = request.options.run_config() if request is not None else {}
        run_id = await run_in_threadpool(state.launcher.launch, protocol, ingest_first=bool(rows), run_config=run_config)
    except ValueError as exc:
        raise UnprocessableData(str(exc), field="rows") from None
    except Exception as exc:
        raise ServiceUnavailable(f"could not launch the training run: {exc}") from None
    state.metrics.train_launches.labels(protocol).inc()
    return TrainResponse(
        run_id=run_id,
        protocol=protocol,
        job=state.settings.train_job,
        partition=protocol,
        status="LAUNCHING" if state.launcher.mode == "instance" else "QUEUED",
        status_url=f"/runs/{run_id}",
        ingested_rows=len(rows),
        launched_via=state.launcher.mode,  # type: ignore[arg-type]
    )


@router.get("/runs/{run_id}", response_model=RunStatusResponse, responses={404: {"description": "Unknown run id."}})
def run_status(
    run_id: Annotated[uuid.UUID, Path(description="Run id returned by POST /train/{protocol}.")],
    state: ServiceState = Depends(get_state),
) -> RunStatusResponse:
    """Status of a training run, read from the Dagster instance (or the launch record before it exists)."""
    try:
        run = state.launcher.status(str(run_id))
    except RunNotFound:
        raise NotFound(f"no run {run_id} on the Dagster instance", problem="unknown-run") from None
    return RunStatusResponse(
        run_id=run.run_id,
        status=run.status,  # type: ignore[arg-type]
        finished=run.finished,
        job=run.job,
        partition=run.partition,
        start_time=run.start_time,
        end_time=run.end_time,
        detail=run.detail,
    )

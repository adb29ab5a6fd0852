"""Shared request dependencies."""

from __future__ import annotations

from fastapi import Request

from earnopt_assets.service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    return request.app.state.earnopt

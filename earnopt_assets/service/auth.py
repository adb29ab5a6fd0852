"""Bearer-token guard for mutating endpoints.

No token configured (``EARNOPT_API_TOKEN`` unset) → 403: the endpoint is disabled, with a message saying
how to enable it. Missing or malformed ``Authorization`` header, or a wrong token → 401 with
``WWW-Authenticate: Bearer``. Tokens are compared in constant time.
"""

from __future__ import annotations

import secrets

from fastapi import Request

from earnopt_assets.service.errors import Forbidden, Unauthorized


def require_token(request: Request) -> None:
    expected = request.app.state.earnopt.settings.token_value()
    if not expected:
        raise Forbidden(
            "mutating endpoints are disabled: no API token is configured; set EARNOPT_API_TOKEN and restart",
            problem="mutations-disabled",
        )
    header = request.headers.get("authorization", "")
    scheme, _, supplied = header.partition(" ")
    if scheme.lower() != "bearer" or not supplied.strip():
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <EARNOPT_API_TOKEN>'")
    if not secrets.compare_digest(supplied.strip().encode(), expected.encode()):
        raise Unauthorized("invalid bearer token", problem="invalid-token")

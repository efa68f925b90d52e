"""What the API's routes depend on: the station's control (``app.state.control``), the token
check for every route that changes the station, and the enrollment engine where there is one."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from sortline.edge_runtime.learning.enroll import Enroller

from .control import StationControl


def control(request: Request) -> StationControl:
    return request.app.state.control


def authorised(request: Request) -> None:
    """Routes that change the station need ``Authorization: Bearer <token>``; without a token
    configured every such call is refused (401)."""
    token = request.app.state.token
    if not token:
        raise HTTPException(401, "no API token is configured on this station ([api] token or "
                                 "SORTLINE_API_TOKEN): changes through the API are off")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise HTTPException(401, "a valid 'Authorization: Bearer <token>' header is needed",
                            headers={"WWW-Authenticate": "Bearer"})


def enroller(request: Request) -> Enroller:
    engine = control(request).enroller
    if engine is None:
        raise HTTPException(409, "this station has no store ([station] store in the station file)")
    return engine


Control = Annotated[StationControl, Depends(control)]  # a route's parameter: the station's control
Engine = Annotated[Enroller, Depends(enroller)]  # a route's parameter: the enrollment engine (409 without a store)

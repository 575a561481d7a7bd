"""The console's request context: who is asking (login, CSRF) and the error answers.

``viewer(request)`` admits a read (a valid session when login is required); ``actor(request)``
admits a change: a session in every mode, plus its CSRF token in ``X-CSRF-Token``. Routes call
them first; each raises ``ConsoleError``, which the app answers as
``{"error": {"code", "message"}}`` with its status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from broker_agent.http.console.auth import CSRF_HEADER, SESSION_COOKIE, Gate, Session
from broker_agent.http.console.client import ConsoleClient


class ConsoleError(Exception):
    def __init__(
        self, status: int, code: str, message: str, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}

    def response(self) -> JSONResponse:
        body = {"error": {"code": self.code, "message": self.message}, **self.extra}
        headers = {"Cache-Control": "no-store"}
        if self.status == 429:
            headers["Retry-After"] = str(int(self.extra.get("retry_after_s", 60)))
        return JSONResponse(body, status_code=self.status, headers=headers)


@dataclass
class Console:
    """Everything a console route needs: the MQTT client, the gate, the server's stop signal."""

    client: ConsoleClient
    gate: Gate
    stopping: asyncio.Event

    async def batches(self, queue: asyncio.Queue[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """Change batches for one event stream, until the server stops."""
        while not self.stopping.is_set():
            got = asyncio.ensure_future(queue.get())
            stop = asyncio.ensure_future(self.stopping.wait())
            try:
                await asyncio.wait({got, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not got.done():
                    got.cancel()
            if got.done() and not got.cancelled():
                yield got.result()


def console_of(request: Request) -> Console:
    console = request.app.state.console
    assert isinstance(console, Console)
    return console


def current_session(request: Request) -> Session | None:
    return console_of(request).gate.session(request.cookies.get(SESSION_COOKIE))


def viewer(request: Request) -> Console:
    console = console_of(request)
    if console.gate.login_required and current_session(request) is None:
        raise ConsoleError(401, "login_required", "log in first (POST /api/login)")
    return console


def actor(request: Request) -> Console:
    console = console_of(request)
    session = current_session(request)
    if session is None:
        if console.gate.login_required:
            raise ConsoleError(401, "login_required", "log in first (POST /api/login)")
        raise ConsoleError(403, "csrf", "no session: GET /api/session first, then send its token")
    if request.headers.get(CSRF_HEADER) != session.csrf:
        raise ConsoleError(403, "csrf", f"missing or wrong {CSRF_HEADER} header")
    return console


def set_session_cookie(response: JSONResponse, gate: Gate, session_id: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        httponly=True,
        samesite="strict",
        secure=gate.secure_cookies,
        path="/",
    )


# -- login routes ----------------------------------------------------------------------------

router = APIRouter(prefix="/api", tags=["session"])


class Login(BaseModel):
    username: str
    password: str


class SessionInfo(BaseModel):
    user: str | None
    csrf_token: str | None
    login_required: bool


@router.post("/login", response_model=SessionInfo)
async def login(request: Request, body: Login) -> JSONResponse:
    """Log in as the operator: a session cookie (HttpOnly, SameSite=Strict) and a CSRF token."""
    gate = console_of(request).gate
    client = request.client.host if request.client else "?"
    wait = gate.retry_after(client)
    if wait is not None:
        raise ConsoleError(
            429, "rate_limited", "too many failed logins; wait", {"retry_after_s": wait + 1}
        )
    if not gate.login_required:
        raise ConsoleError(400, "login_not_configured", "this console runs open on loopback")
    made = await gate.login(client, body.username, body.password)
    if made is None:
        raise ConsoleError(401, "login_failed", "wrong user name or password")
    session_id, session = made
    response = JSONResponse(
        SessionInfo(user=session.user, csrf_token=session.csrf, login_required=True).model_dump()
    )
    set_session_cookie(response, gate, session_id)
    return response


@router.post("/logout")
async def logout(request: Request) -> JSONResponse:
    console = console_of(request)
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id and current_session(request) is not None:
        actor(request)
        console.gate.logout(session_id)
    response = JSONResponse({"ok": True})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/session", response_model=SessionInfo)
async def session_info(request: Request) -> JSONResponse:
    """Who is logged in, and the CSRF token to send with changes (makes one when open)."""
    gate = console_of(request).gate
    session = current_session(request)
    if session is not None:
        info = SessionInfo(user=session.user, csrf_token=session.csrf, login_required=True)
        info.login_required = gate.login_required
        return JSONResponse(info.model_dump(), headers={"Cache-Control": "no-store"})
    if gate.login_required:
        raise ConsoleError(401, "login_required", "log in first (POST /api/login)")
    session_id, session = gate.open_session()
    info = SessionInfo(user=session.user, csrf_token=session.csrf, login_required=False)
    response = JSONResponse(info.model_dump(), headers={"Cache-Control": "no-store"})
    set_session_cookie(response, gate, session_id)
    return response

"""The live dashboard: static HTML, CSS and ES modules served at `/` (no build step).

`routes(dev_login, issue_token)` gives the Starlette routes: `/` (the page), `/static/...` (its
modules and styles) and, only with TALLY_DEV_LOGIN=1 on a SQLite database,
`POST /dev-login`, which signs a short-lived admin token for local development.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
DEV_LOGIN_ORG = "org_demo"
DEV_LOGIN_TTL_SECONDS = 3600
ORG_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
CONFIG_MARKER = "<!--tally:config-->"
log = logging.getLogger("tally.web")

# The page loads nothing but its own files and talks only to its own origin.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def render_index(dev_login: bool) -> str:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    config = '<meta name="tally-dev-login" content="on">' if dev_login else ""
    return html.replace(CONFIG_MARKER, config)


IssueToken = Callable[[str], str]  # an admin token for this org


def routes(dev_login: bool, issue_token: IssueToken) -> list[BaseRoute]:
    """The page; `POST /dev-login` too when `dev_login` (main.py decides: asked for, and on SQLite)."""
    page = render_index(dev_login)

    async def index(_request: Request) -> Response:
        return HTMLResponse(page, headers=HEADERS)

    result: list[BaseRoute] = [
        Route("/", index, methods=["GET", "HEAD"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    if dev_login:
        result.append(Route("/dev-login", dev_login_endpoint(issue_token), methods=["POST"]))
    return result


def dev_login_endpoint(issue_token: IssueToken) -> Any:
    async def endpoint(request: Request) -> Response:
        org = await _org_of(request)
        if not ORG_ID.fullmatch(org):
            return JSONResponse({"error": "orgId: 1-64 letters, digits, '_', '.', ':' or '-'"}, status_code=400)
        token = issue_token(org)
        return JSONResponse(
            {"token": token, "orgId": org, "role": "admin", "expiresIn": DEV_LOGIN_TTL_SECONDS},
            headers={"Cache-Control": "no-store"},
        )

    return endpoint


async def _org_of(request: Request) -> str:
    """`orgId` from a JSON or URL-encoded body; the development org when absent."""
    body = await request.body()
    if len(body) > 4096:
        return ""
    value: Any = None
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return ""
        value = data.get("orgId") if isinstance(data, dict) else None
    else:
        value = next(iter(parse_qs(body.decode("utf-8", "replace")).get("orgId", [])), None)
    if value is None or value == "":
        return DEV_LOGIN_ORG
    return value.strip() if isinstance(value, str) else ""

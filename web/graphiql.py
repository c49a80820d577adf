"""GraphiQL at GET /graphql (Accept: text/html), working with no internet.

Its JavaScript and CSS (GraphiQL 2, React 17, the explorer plugin, graphql-ws) come from the
`graphene-django-graphiql-static` wheel, installed by `uv sync` like any other
dependency; only its files are used (none of its Python, so no Django).
Tally serves them at /graphiql/static/ and the page loads nothing from elsewhere.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

ASSET_PACKAGE = "graphene_django_graphiql_static"
ASSET_PREFIX = "/graphiql/static"
STYLES = ("graphiql.min.css", "style.css")
SCRIPTS = (
    "react.production.min.js",
    "react-dom.production.min.js",
    "graphiql.min.js",
    "graphiql-plugin-explorer.umd.js",
    "graphql-ws.min.js",  # newer than the copy inside graphiql.min.js (see graphiql-start.js)
)
START_SCRIPT = "/static/graphiql-start.js"  # Tally's own, next to the dashboard's modules

# GraphiQL and CodeMirror set inline styles and embed their fonts and icons as data: URLs.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def asset_directory() -> Path:
    """The wheel's asset folder, found without importing the package (its apps.py needs Django)."""
    spec = importlib.util.find_spec(ASSET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{ASSET_PACKAGE} is not installed: run `uv sync`")
    return Path(next(iter(spec.submodule_search_locations))) / "static" / ASSET_PACKAGE


def render_page() -> str:
    styles = "".join(f'\n  <link rel="stylesheet" href="{ASSET_PREFIX}/{name}">' for name in STYLES)
    scripts = "".join(f'\n  <script src="{ASSET_PREFIX}/{name}"></script>' for name in SCRIPTS)
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Tally · GraphiQL</title>
  <link rel="icon" href="data:,">{styles}
  <style>html, body, #graphiql {{ height: 100%; margin: 0; overflow: hidden; }}</style>
</head>
<body>
  <div id="graphiql">Loading…</div>{scripts}
  <script src="{START_SCRIPT}"></script>
</body>
</html>
"""


PAGE = render_page()


def page_response() -> HTMLResponse:
    return HTMLResponse(PAGE, headers=HEADERS)


def routes() -> list[BaseRoute]:
    return [Mount(ASSET_PREFIX, app=StaticFiles(directory=asset_directory()), name="graphiql-static")]

"""How an HTTP answer is shaped, as GraphQL over HTTP says.

- The media type follows the request's `Accept`: `application/graphql-response+json`
  when the client names it and ranks it at least as high as `application/json`
  (or a wildcard), else `application/json` (also for `*/*` or no `Accept` at all,
  as older clients expect).
- Under `application/graphql-response+json`, a request error (the document does
  not parse or validate, or its variables do not coerce: nothing was executed)
  is a 400 without a `data` entry. Under `application/json` it stays a 200 with
  `data: null`, the behaviour such clients were written against.
- A request refused before GraphQL runs (a body that is no JSON object, a
  mutation over GET) is answered as a GraphQL error with a code, never as
  plain text.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response
from strawberry.types import ExecutionResult

from db.errors import BadInput

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"


def _quality(accept: str, names: tuple[str, ...]) -> float:
    """The highest q the Accept header gives any of these names, 0 if none."""
    best = 0.0
    for entry in accept.split(","):
        name, *parameters = (part.strip() for part in entry.split(";"))
        if name.lower() not in names:
            continue
        q = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best = max(best, q)
    return best


def media_type_for(accept: str | None) -> str:
    if not accept:
        return JSON
    graphql_response = _quality(accept, (GRAPHQL_RESPONSE,))
    json_or_any = _quality(accept, (JSON, "application/*", "*/*"))
    return GRAPHQL_RESPONSE if graphql_response > 0 and graphql_response >= json_or_any else JSON


def is_request_error(result: ExecutionResult) -> bool:
    """Nothing was executed: errors, no data, and none of the errors belongs to a field."""
    errors = result.errors or []
    return result.data is None and bool(errors) and all(error.path is None for error in errors)


def error_response(message: str, status: int, media_type: str, headers: dict[str, str] | None = None) -> Response:
    body = {"errors": [{"message": message, "extensions": {"code": BadInput.code}}]}
    return Response(json.dumps(body), status_code=status, media_type=media_type, headers=headers)


def with_media_type(response: Response, media_type: str) -> Response:
    if media_type != JSON:
        response.headers["content-type"] = f"{media_type}; charset=utf-8"
    return response


def drop_data(response_data: Any) -> None:
    if isinstance(response_data, dict):
        response_data.pop("data", None)

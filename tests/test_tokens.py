"""WorkOS-style RS256 tokens against a JWKS served on loopback, and what must be refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from main import create_app
from settings import Settings
from tests.helpers import Api, token

ISSUER = "https://auth.tally.test/"
QUERY = '{ organizationStats(orgId: "org_a") { version } }'


class Jwks:
    """A JWKS endpoint on 127.0.0.1 whose keys a test can rotate; counts fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                body = json.dumps(
                    {
                        "keys": [
                            json.loads(RSAAlgorithm.to_jwk(k.public_key())) | {"kid": kid, "alg": "RS256", "use": "sig"}
                            for kid, k in jwks.keys.items()
                        ]
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def token(self, kid: str, **claims: Any) -> str:
        payload = {
            "sub": "user_1",
            "org_id": "org_a",
            "role": "admin",
            "exp": int(time.time()) + 600,
            "iss": ISSUER,
        } | claims
        return jwt.encode(payload, self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    server = Jwks()
    server.add_key("k1")
    yield server
    server.server.shutdown()


@pytest.fixture
async def client(database_url: str, jwks: Jwks) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        Settings(database_url=database_url, jwks_url=jwks.url, jwt_issuer=ISSUER, recalc_interval_seconds=0)
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tally") as http:
        yield http
    await app.state.db.dispose()


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def code_for(client: httpx.AsyncClient, bearer: str) -> str | None:
    body = await Api(client, bearer).raw(QUERY)
    return body["errors"][0]["extensions"]["code"] if body.get("errors") else None


async def test_rs256_token_from_jwks_is_accepted(client: httpx.AsyncClient, jwks: Jwks) -> None:
    assert await code_for(client, jwks.token("k1")) is None


async def test_keys_are_cached(client: httpx.AsyncClient, jwks: Jwks) -> None:
    # Twenty different tokens: each one's signature is checked (a token seen before
    # would be answered by the verified-token cache without needing a key).
    tokens = {jwks.token("k1", sub=f"user_{n}") for n in range(20)}
    assert len(tokens) == 20
    for bearer in tokens:
        assert await code_for(client, bearer) is None
    assert jwks.fetches == 1
    jwks.add_key("k2")
    # Fetched a moment ago: the default bound (30 s) holds back an immediate refetch.
    assert await code_for(client, jwks.token("k2")) == "UNAUTHENTICATED"
    assert jwks.fetches == 1


async def test_unknown_kid_refreshes_keys_at_a_bounded_rate(database_url: str, jwks: Jwks) -> None:
    app = create_app(
        Settings(
            database_url=database_url,
            jwks_url=jwks.url,
            jwt_issuer=ISSUER,
            jwks_min_refresh_seconds=0.5,
            recalc_interval_seconds=0,
        )
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tally") as client:
        assert await code_for(client, jwks.token("k1")) is None
        jwks.add_key("k2")
        await asyncio.sleep(0.6)
        assert await code_for(client, jwks.token("k2")) is None  # refreshed on the unknown kid
        fetches = jwks.fetches
        jwks.add_key("k3")
        for _ in range(50):
            forged = jwt.encode(
                {"sub": "x", "exp": int(time.time()) + 60}, jwks.keys["k3"], algorithm="RS256", headers={"kid": "nope"}
            )
            assert await code_for(client, forged) == "UNAUTHENTICATED"
        assert jwks.fetches - fetches <= 1
    await app.state.db.dispose()


async def test_refused_tokens(client: httpx.AsyncClient, jwks: Jwks) -> None:
    assert await code_for(client, jwks.token("k1", exp=int(time.time()) - 5)) == "UNAUTHENTICATED"
    assert await code_for(client, jwks.token("k1", iss="https://evil.test/")) == "UNAUTHENTICATED"
    assert await code_for(client, jwks.token("k1", role="root")) == "UNAUTHENTICATED"
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': 'x', 'org_id': 'org_a', 'role': 'admin', 'exp': int(time.time()) + 60, 'iss': ISSUER})}."
    assert await code_for(client, unsigned) == "UNAUTHENTICATED"
    # Algorithm confusion: HS256 keyed with the RSA public key must not pass as RS256.
    public_pem = (
        jwks.keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header, payload = (
        b64({"alg": "HS256", "typ": "JWT", "kid": "k1"}),
        b64({"sub": "x", "org_id": "org_a", "role": "admin", "exp": int(time.time()) + 60, "iss": ISSUER}),
    )
    signature = (
        base64.urlsafe_b64encode(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        .rstrip(b"=")
        .decode()
    )
    assert await code_for(client, f"{header}.{payload}.{signature}") == "UNAUTHENTICATED"
    # With JWKS configured and no TALLY_JWT_SECRET, the development secret is not accepted.
    assert await code_for(client, token("org_a", "admin")) == "UNAUTHENTICATED"
    assert await code_for(client, "not-a-jwt") == "UNAUTHENTICATED"

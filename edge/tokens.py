"""Bearer JWTs (WorkOS AuthKit claims): verified against an HS256 secret or RS256 JWKS keys."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import httpx
import jwt

from db.errors import Unauthenticated
from schema.principal import ROLES, Principal

log = logging.getLogger("tally.auth")


class JwksKeys:
    """RS256 public keys from a JWKS URL (WorkOS), cached by key id.

    An unknown `kid` triggers a refresh, at most once per `min_refresh_seconds`,
    so tokens with made-up key ids cannot make Tally hammer the key server.
    """

    def __init__(self, url: str, *, min_refresh_seconds: float = 30, timeout: float = 5) -> None:
        self.url = url
        self.min_refresh_seconds = min_refresh_seconds
        self.timeout = timeout
        self._keys: dict[str, Any] = {}
        self._refreshed_at = -math.inf
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str | None) -> Any:
        if kid not in self._keys:
            async with self._lock:
                if kid not in self._keys and time.monotonic() - self._refreshed_at >= self.min_refresh_seconds:
                    await self._refresh()
        if kid not in self._keys:
            raise Unauthenticated("Token signed by an unknown key")
        return self._keys[kid]

    async def _refresh(self) -> None:
        self._refreshed_at = time.monotonic()
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.get(self.url)
                response.raise_for_status()
            keys = jwt.PyJWKSet.from_dict(response.json()).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as error:
            log.warning("JWKS refresh from %s failed: %r", self.url, error)
            return
        self._keys = {k.key_id: k.key for k in keys if k.key_id and k.key_type == "RSA"}


class TokenVerifier:
    """Bearer tokens: RS256 against JWKS keys, or HS256 with the shared secret.

    The algorithm decides the key source and nothing else can: an RS256 token
    is never checked against the secret nor an HS256 token against a public key
    (no algorithm confusion), and `alg: none` is never accepted.

    A verified token is remembered until it expires (at most CACHE_SIZE of
    them): a dashboard sends the same token with every request, and checking
    its signature again each time costs more than the count it asks for.
    """

    CACHE_SIZE = 10_000

    def __init__(self, secret: str | None, issuer: str | None = None, jwks: JwksKeys | None = None) -> None:
        self.secret = secret
        self.issuer = issuer
        self.jwks = jwks
        self._verified: dict[str, Principal] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated("Missing Authorization: Bearer <token>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Authorization must be 'Bearer <token>'")
        return await self.verify(token.strip())

    async def verify(self, token: str) -> Principal:
        principal = self._verified.get(token)
        if principal is not None and principal.expires_at > time.time():
            return principal
        principal = await self._verify_signature(token)
        if len(self._verified) >= self.CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # the oldest
        self._verified[token] = principal
        return principal

    async def _verify_signature(self, token: str) -> Principal:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            if algorithm == "RS256" and self.jwks is not None:
                key = await self.jwks.key(jwt.get_unverified_header(token).get("kid"))
            elif algorithm == "HS256" and self.secret:
                key = self.secret
            else:
                raise Unauthenticated(f"Tokens signed with {algorithm!r} are not accepted")
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self.issuer,
                options={"require": ["exp", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError as error:
            raise Unauthenticated("Token expired") from error
        except jwt.PyJWTError as error:
            raise Unauthenticated("Invalid token") from error
        role, org_id = claims.get("role"), claims.get("org_id")
        if role not in ROLES or (role != "service" and not isinstance(org_id, str)):
            raise Unauthenticated("Token lacks a valid role and org_id")
        return Principal(subject=str(claims["sub"]), role=role, org_id=org_id, expires_at=float(claims["exp"]))

    def issue(self, *, org_id: str | None, role: str, subject: str, ttl_seconds: int) -> str:
        if not self.secret:
            raise RuntimeError("no TALLY_JWT_SECRET to sign with")
        claims: dict[str, Any] = {"sub": subject, "role": role, "exp": int(time.time()) + ttl_seconds}
        if org_id:
            claims["org_id"] = org_id
        if self.issuer:
            claims["iss"] = self.issuer
        return jwt.encode(claims, self.secret, algorithm="HS256")

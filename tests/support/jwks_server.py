"""A local identity provider's JWKS endpoint for tests: keys published and withdrawn at will, fetches counted."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

JWKS = web.AppKey("jwks", dict)


class SigningKey:
    """An RSA key pair of the provider, published under ``kid``."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid, **header})


def claims(iss: str, aud: str, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"iss": iss, "aud": aud, "sub": "alice@ops", "iat": now, "exp": now + 600}
    out.update(over)
    return {k: v for k, v in out.items() if v is not None}


def jwks_app(published: list[SigningKey]) -> web.Application:
    """The JWKS of whatever ``published`` holds when it is fetched; ``app[JWKS]`` has ``fetches`` and ``fail``."""
    app = web.Application()
    app[JWKS] = {"fetches": 0, "fail": False}

    async def serve(request: web.Request) -> web.Response:
        state = request.app[JWKS]
        state["fetches"] += 1
        if state["fail"]:
            return web.Response(status=500, text="identity provider down")
        return web.json_response({"keys": [k.jwk() for k in published]})

    app.router.add_get("/jwks.json", serve)
    return app

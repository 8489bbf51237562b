"""In-process helpers: a request from a given peer, and a compiled identity with its directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from tollgate.config import config_from_dict
from tollgate.config.model import Config
from tollgate.identity import Directory, IdentityRuntime, Principal, authenticate


class PeerTransport:
    """Just enough of a transport for ``peername``."""

    def __init__(self, peer: str) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def mocked_request(
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    *,
    path: str = "/v1/chat/completions",
    peer: str = "203.0.113.9",
) -> web.Request:
    from multidict import CIMultiDict

    return make_mocked_request("POST", path, headers=CIMultiDict(headers or {}), transport=PeerTransport(peer))


class Identified:
    """A config compiled the way a gateway process compiles it, for calling the identify stage directly."""

    def __init__(
        self, doc: dict[str, Any], *, clock: Callable[[], float] = time.time, env: dict[str, str] | None = None
    ) -> None:
        self.config: Config = config_from_dict(doc, env=env or {})
        self.identity = IdentityRuntime(self.config, clock=clock)
        self.directory = Directory(self.config)

    def principal(self, headers: dict[str, str] | None = None, **kwargs: Any) -> Principal:
        return authenticate(mocked_request(headers, **kwargs), self.identity, self.directory)

"""The command line both benchmark pass-throughs share: where to listen, the upstream, the credential, the loop."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["run_proxy"]

Serve = Callable[[str, int, str, "str | None"], Coroutine[Any, Any, None]]


def run_proxy(description: str, serve: Serve) -> None:
    """Parse ``--host/--port/--upstream/--api-key`` and run ``serve`` on uvloop when it is installed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://127.0.0.1:9000/v1")
    parser.add_argument("--api-key", help="credential sent upstream instead of the client's")
    args = parser.parse_args()
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.host, args.port, args.upstream, args.api_key))

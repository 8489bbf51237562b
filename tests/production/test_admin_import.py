"""Only the process that serves the admin API loads it: a supervisor's other workers, and a gateway whose config has
no admin listener, start without importing its routes and models, or aiohttp (a third of a start's imports)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from ..support.processes import REPO, gateway_config, refusing_port

pytestmark = pytest.mark.process

# A real gateway in a process of its own (sys.modules starts empty), run until it listens, then stopped.
SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from tollgate.config import config_from_dict
    from tollgate.process.server import install_event_loop_policy, run_gateway
    from tollgate.runtime.state import GatewayState

    state = GatewayState(config_from_dict(json.loads(sys.argv[1])))
    seen = {}

    async def main():
        stop = asyncio.Event()

        def started(public_port, admin_port):
            seen["admin_port"] = admin_port
            seen["jwt"] = "jwt" in sys.modules or "cryptography" in sys.modules
            seen["loaded"] = sorted(
                m for m in sys.modules if m in ("tollgate.admin", "aiohttp") or m.startswith("tollgate.admin.")
            )
            stop.set()

        await run_gateway(state, admin=sys.argv[2] == "1", on_started=started, stop=stop)

    install_event_loop_policy()
    asyncio.run(main())
    print(json.dumps(seen))
    """
)


def _started(config: dict[str, Any], *, admin: bool) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(config), "1" if admin else "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _config(*, admin_listener: bool) -> dict[str, Any]:
    config = gateway_config(f"http://127.0.0.1:{refusing_port()}/v1")
    if admin_listener:
        config["listeners"] = {
            "public": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0, "token": "t" * 32},
        }
    return config


def test_a_worker_that_leaves_the_admin_listener_to_another_never_imports_the_admin_api() -> None:
    seen = _started(_config(admin_listener=True), admin=False)
    assert seen == {"admin_port": None, "loaded": [], "jwt": False}, "nor PyJWT, without JWT identity"


def test_a_config_without_an_admin_listener_never_imports_the_admin_api() -> None:
    seen = _started(_config(admin_listener=False), admin=True)
    assert seen == {"admin_port": None, "loaded": [], "jwt": False}, "nor PyJWT, without JWT identity"


def test_the_process_that_serves_the_admin_api_imports_it_and_listens() -> None:
    seen = _started(_config(admin_listener=True), admin=True)
    assert isinstance(seen["admin_port"], int) and seen["admin_port"] > 0
    assert "tollgate.admin.app" in seen["loaded"] and "aiohttp" in seen["loaded"]

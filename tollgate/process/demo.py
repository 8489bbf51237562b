"""``tollgate demo``: the gateway, a built-in mock upstream and demo data in one process, ready for curl."""

from __future__ import annotations

import asyncio
import errno
import importlib.resources
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path

from tollgate.config import load_config
from tollgate.errors import ConfigError
from tollgate.process.server import install_event_loop_policy, run_gateway, with_listen_address
from tollgate.runtime.state import GatewayState

__all__ = ["DEMO_ADMIN_PORT", "DEMO_API_KEY", "DEMO_PORT", "demo_config_path", "demo_data_dir", "run_demo"]

# The demo tenant's key (also declared in config/demo.yaml); safe to print, it only works against the demo.
DEMO_API_KEY = "tg_demo_0123456789abcdef0123456789abcdef"
# The ports the demo asks for when none is named; taken ones are swapped for free ones (printed at start).
DEMO_PORT = 8080
DEMO_ADMIN_PORT = 8081


def demo_data_dir() -> Path:
    """Where the demo keeps its database: ``$TOLLGATE_DATA_DIR``, else ``$XDG_DATA_HOME/tollgate``, else
    ``~/.local/share/tollgate``."""
    named = os.environ.get("TOLLGATE_DATA_DIR")
    if named:
        return Path(named)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tollgate"


def demo_config_path() -> Path:
    """config/demo.yaml from a source checkout, else the copy installed with the package."""
    in_repo = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
    if in_repo.is_file():
        return in_repo
    return Path(str(importlib.resources.files("tollgate.examples").joinpath("demo.yaml")))


def _snippet(host: str, port: int, admin_port: int | None, database: str, moved: list[str]) -> str:
    base = f"http://{host}:{port}/v1"
    admin = "" if admin_port is None else f"\nAdmin API: http://{host}:{admin_port}/admin (token in config/demo.yaml)"
    notes = "".join(f"\n{line}" for line in moved)
    return f"""
Tollgate demo is up: {base}  (mock upstream behind it; Ctrl-C to stop){admin}
Its tenants, keys, usage and spend log are kept in {database}{notes}

  curl -s {base}/chat/completions \\
    -H 'Authorization: Bearer {DEMO_API_KEY}' -H 'Content-Type: application/json' \\
    -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  pip install openai   # the SDK the next lines use, in the environment you run them from
  python - <<'EOF'
  from openai import OpenAI
  client = OpenAI(base_url="{base}", api_key="{DEMO_API_KEY}")
  for chunk in client.chat.completions.create(
          model="gpt-4o-mini", stream=True,
          messages=[{{"role": "user", "content": "Hello"}}]):
      print(chunk.choices[0].delta.content or "", end="", flush=True) if chunk.choices else None
  print()
  EOF
"""


def port_is_free(host: str, port: int) -> bool:
    """Whether ``port`` on ``host`` can be listened on now (as the gateway binds it: SO_REUSEADDR, no SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def choose_port(host: str, named: int | None, default: int, what: str, flag: str, moved: list[str]) -> int:
    """The port to listen on: the one named (a taken one fails at bind, naming ``flag``), else ``default``,
    else 0 (a free one) with a line in ``moved`` saying so."""
    if named is not None:
        return named
    if port_is_free(host, default):
        return default
    moved.append(f"({what} port {default} is taken, so a free one was chosen; {flag} names one)")
    return 0


async def _main(host: str, port: int | None, admin_port: int | None) -> None:
    from tollgate.mock.upstream import MockSettings, start_mock

    mock_runner, mock_port = await start_mock("127.0.0.1", 0, MockSettings())
    try:
        os.environ["TOLLGATE_DEMO_UPSTREAM"] = f"http://127.0.0.1:{mock_port}/v1"
        os.environ["TOLLGATE_DEMO_ANTHROPIC"] = f"http://127.0.0.1:{mock_port}"
        if "TOLLGATE_DEMO_DATABASE" not in os.environ:
            data = demo_data_dir()
            data.mkdir(parents=True, exist_ok=True)
            os.environ["TOLLGATE_DEMO_DATABASE"] = f"sqlite:///{data / 'demo.db'}"
        database = os.environ["TOLLGATE_DEMO_DATABASE"].removeprefix("sqlite:///")
        path = demo_config_path()
        moved: list[str] = []
        public = choose_port(host, port, DEMO_PORT, "the public", "--port", moved)
        config = with_listen_address(load_config(path), host, public)
        admin = choose_port(host, admin_port, DEMO_ADMIN_PORT, "the admin", "--admin-port", moved)
        listeners = config.listeners
        config = replace(config, listeners=replace(listeners, admin=replace(listeners.admin, host=host, port=admin)))
        state = GatewayState(config, config_path=path)

        def started(public_port: int, bound_admin: int | None) -> None:
            print(_snippet(host, public_port, bound_admin, database, moved), flush=True)

        await run_gateway(state, on_started=started)
    finally:
        await mock_runner.cleanup()


def run_demo(*, host: str = "127.0.0.1", port: int | None = None, admin_port: int | None = None) -> int:
    """Run the demo until Ctrl-C. ``port`` / ``admin_port`` None: 8080 / 8081, or free ones when those are taken."""
    install_event_loop_policy()
    try:
        asyncio.run(_main(host, port, admin_port))
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    except OSError as exc:
        taken = [
            f"{flag} {value}"
            for flag, value in (("--port", port), ("--admin-port", admin_port))
            if value and not port_is_free(host, value)
        ]
        advice = f"; {' and '.join(taken)} named a port in use: choose another, or leave it out" if taken else ""
        print(f"cannot start the demo on {host}: {exc.strerror or exc}{advice}", file=sys.stderr)
        return 1
    return 0

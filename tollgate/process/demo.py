"""``tollgate demo``: the gateway, a built-in mock upstream and demo data in one process, ready for curl."""

from __future__ import annotations

import asyncio
import importlib.resources
import os
import sys
from pathlib import Path

from tollgate.config import load_config
from tollgate.errors import ConfigError
from tollgate.process.server import install_event_loop_policy, run_gateway, with_listen_address
from tollgate.runtime.state import GatewayState

__all__ = ["DEMO_API_KEY", "demo_config_path", "demo_data_dir", "run_demo"]

# The demo tenant's key (also declared in config/demo.yaml); safe to print, it only works against the demo.
DEMO_API_KEY = "tg_demo_0123456789abcdef0123456789abcdef"


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


def _snippet(host: str, port: int, database: str) -> str:
    base = f"http://{host}:{port}/v1"
    return f"""
Tollgate demo is up: {base}  (mock upstream behind it; Ctrl-C to stop)
Its tenants, keys, usage and spend log are kept in {database}

  curl -s {base}/chat/completions \\
    -H 'Authorization: Bearer {DEMO_API_KEY}' -H 'Content-Type: application/json' \\
    -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello"}}]}}'

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


async def _main(host: str, port: int) -> None:
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
        config = with_listen_address(load_config(path), host, port)
        state = GatewayState(config, config_path=path)

        def started(public_port: int, _admin_port: int | None) -> None:
            print(_snippet(host, public_port, database), flush=True)

        await run_gateway(state, on_started=started)
    finally:
        await mock_runner.cleanup()


def run_demo(*, host: str = "127.0.0.1", port: int = 8080) -> int:
    install_event_loop_policy()
    try:
        asyncio.run(_main(host, port))
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot start the demo on {host}:{port}: {exc.strerror or exc}; try --port", file=sys.stderr)
        return 1
    return 0

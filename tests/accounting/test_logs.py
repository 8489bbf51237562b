"""Application logs: JSON lines carrying the request id and tenant of the request being served, or text as before.

The gateway runs as a real process (``tollgate serve``) whose upstream is down, so that serving a request logs a
warning (the request failed after its attempts); its standard error is read back.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tollgate.accounting.logs import SERVING, JsonFormatter, configure_logging, remove_logging
from tollgate.background import BackgroundTask
from tollgate.config import load_config
from tollgate.edge.answers import Response, json_answer
from tollgate.process import public
from tollgate.process.supervisor import worker_log_format
from tollgate.runtime.state import GatewayState

from ..support.contexts import request_context
from ..support.processes import Proc, gateway_config, gateway_process, refusing_port
from ..support.redis import RedisServer

KEY = "tg_logs-acme-key-0123456789abcdefghijklmnopq"
FAILED = re.compile(r"request \S+ for 'gpt-4o-mini' failed after \d+ attempt")


def config(**overrides: Any) -> dict[str, Any]:
    """A gateway whose only upstream refuses connections, with tenant acme, the access log off."""
    doc = gateway_config(
        f"http://127.0.0.1:{refusing_port()}/v1",
        identity={"chain": ["api_key"]},
        tenants={
            "acme": {
                "plan": "enterprise",
                "keys": [{"id": "acme-main", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
            }
        },
        access_log={"enabled": False},
    )
    doc["upstreams"]["mock"]["timeouts"] = {"connect": "1s"}
    doc.update(overrides)
    return doc


async def failing_request(proc: Proc, request_id: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "x-request-id": request_id}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s, s.post(f"{proc.url}/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status in (502, 503) and r.headers["x-request-id"] == request_id


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a process's output that is a JSON object (all of them, in json mode)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(orjson.loads(line))
    return out


@pytest.mark.process
async def test_json_logs_carry_the_request_id_and_tenant_of_the_request_served() -> None:
    with gateway_process(config(logging={"format": "json"})) as proc:
        await failing_request(proc, "req-json-0001")
        proc.stop()
    text = proc.log()
    lines = json_lines(text)
    assert len(lines) == len([line for line in text.splitlines() if line.strip()]), text  # every line is JSON
    [failed] = [line for line in lines if FAILED.search(line["message"])]
    assert failed["request_id"] == "req-json-0001" and failed["tenant"] == "acme"
    assert failed["level"] == "warning" and failed["logger"] == "tollgate.attempts"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", failed["time"])
    started = [line for line in lines if "request_id" not in line]  # logged outside any request: start, stop
    assert started and all("tenant" not in line for line in started)


@pytest.mark.process
async def test_the_command_line_log_format_wins_and_text_mode_is_unchanged() -> None:
    with gateway_process(config(logging={"format": "json"}), env={"TOLLGATE_LOG_FORMAT": "text"}) as proc:
        await failing_request(proc, "req-text-0001")
        proc.stop()
    text = proc.log()
    assert not json_lines(text)
    [failed] = [line for line in text.splitlines() if FAILED.search(line)]
    # The text format as before: time, level, logger, message (the request id only inside the message).
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING tollgate\.attempts: request req-text-0001 for .*", failed
    )


@pytest.mark.process
@pytest.mark.slow
async def test_workers_log_json_with_their_index(redis: RedisServer) -> None:
    doc = config(logging={"format": "json"}, store={"backend": "redis", "url": redis.url})
    with gateway_process(doc, workers=2) as proc:
        for i in range(4):  # SO_REUSEPORT spreads them; any worker's line will do
            await failing_request(proc, f"req-worker-{i:04d}")
        proc.stop()
    lines = json_lines(proc.log())
    failed = [line for line in lines if FAILED.search(line["message"])]
    assert len(failed) == 4
    for line in failed:
        assert line["worker"] in (0, 1) and isinstance(line["pid"], int)
        assert line["tenant"] == "acme" and line["request_id"].startswith("req-worker-")
    assert {line["worker"] for line in lines if "worker" in line} == {0, 1}


class _Principal:
    tenant = "globex"


class _Served:
    request_id = "req-unit-1"
    principal: _Principal | None = None


def test_a_json_line_holds_the_exception_and_the_request_in_one_line() -> None:
    formatter = JsonFormatter(worker=3)
    try:
        raise ValueError("broken")
    except ValueError:
        record = logging.LogRecord("tollgate.x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    served = _Served()
    token = SERVING.set(served)
    try:
        before_identify = orjson.loads(formatter.format(record))
        served.principal = _Principal()
        after_identify = orjson.loads(formatter.format(record))
    finally:
        SERVING.reset(token)
    outside = orjson.loads(formatter.format(record))
    assert before_identify["request_id"] == "req-unit-1" and "tenant" not in before_identify
    assert after_identify["tenant"] == "globex"  # read when the line is written
    assert after_identify["message"] == "failed here" and after_identify["level"] == "error"
    assert "ValueError: broken" in after_identify["exception"] and "\n" not in formatter.format(record)
    assert after_identify["worker"] == 3
    assert "request_id" not in outside and "tenant" not in outside


async def test_a_background_task_started_while_serving_logs_without_that_request() -> None:
    seen: list[object] = []

    async def run() -> None:
        seen.append(SERVING.get())

    token = SERVING.set(_Served())
    try:
        task = BackgroundTask("probe", run)
        task.start()
        await task.join()
    finally:
        SERVING.reset(token)
    assert seen == [None]


async def test_a_route_served_after_a_proxy_request_on_its_connection_logs_without_that_request(
    tmp_path: Path,
) -> None:
    # A connection's requests run in turn in its task; the proxy handler leaves its request's id in SERVING for the
    # lines logged after its answer. The next request on that connection, if it is not a proxy request (health,
    # models, self-service, stored responses), must not log under that id.
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listeners:\n  public: {host: 127.0.0.1, port: 0}\n  admin: {enabled: false}\n"
        'upstreams:\n  u: {base_url: "http://127.0.0.1:9/v1"}\nmodels:\n  m: {deployments: [{upstream: u}]}\n'
    )
    state = GatewayState(load_config(str(config)))
    seen: list[object] = []

    async def route(request: object, state: object) -> Response:
        seen.append(SERVING.get())
        return json_answer({})

    token = SERVING.set(_Served())  # what the proxy request before it left
    try:
        answer = await public._answer(route, request_context("/healthz").request, state)
    finally:
        SERVING.reset(token)
    assert answer.status == 200 and seen == [None]


def test_configure_logging_sets_every_logger_and_keeps_the_worker_text_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    level = root.level
    try:
        configure_logging("warning", "text", text_format=worker_log_format(2))
        logging.getLogger("tollgate.somewhere").warning("hello %d", 1)
        logging.getLogger("tollgate.somewhere").info("not shown")
        configure_logging("info", "json")
        logging.getLogger("aiohttp.access").info("third party")
    finally:
        remove_logging()
        root.setLevel(level)
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r".* WARNING worker-2\[\d+\] tollgate\.somewhere: hello 1", err[0])
    assert len(err) == 2 and orjson.loads(err[1])["logger"] == "aiohttp.access"

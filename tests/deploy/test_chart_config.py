"""The config file the chart puts in its ConfigMap passes `tollgate check-config`, run with exactly the environment
the Deployment gives the gateway (its env entries, and the keys of the Secrets it takes envFrom); without the admin
token's Secret the gateway refuses to start and says which variable is missing. A gateway started as the container
is (its args, its environment) answers the probes where the Deployment asks and serves the metric KEDA reads."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..support.chart import Rendered, render_chart
from ..support.processes import free_port, owned, start_process, wait_for_port
from .test_chart import SCENARIOS, container

pytestmark = pytest.mark.process

TOLLGATE = str(Path(sys.executable).with_name("tollgate"))
# What an operator puts in the Secrets the chart does not make (README.md, "Kubernetes").
OPERATOR_SECRETS = {
    "TOLLGATE_ADMIN_TOKEN": "an-admin-token-the-operator-made",
    "OPENAI_API_KEY": "sk-operator",
    "PGPASSWORD": "pg-secret",
}


def pod_environment(r: Rendered, operator_secrets: dict[str, str]) -> dict[str, str]:
    """The gateway container's environment as Kubernetes builds it: the Secrets of envFrom (the chart's own, else the
    operator's), then each env entry in order, $(VAR) expanded from those before it; a valueFrom entry reads the
    operator's secrets."""
    made = {s["metadata"]["name"]: s["stringData"] for s in r.all("Secret")}
    env: dict[str, str] = {}
    for source in container(r)["envFrom"]:
        name = source["secretRef"]["name"]
        env.update(made.get(name, operator_secrets))
    for entry in container(r)["env"]:
        if "valueFrom" in entry:
            env[entry["name"]] = operator_secrets[entry["name"]]
        else:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), entry["value"])
    return env


def check_config(r: Rendered, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(r.one("ConfigMap")["data"]["gateway.yaml"])
    return subprocess.run(
        [TOLLGATE, "check-config", str(path)],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_rendered_config_passes_check_config_with_the_pods_environment(scenario: str, tmp_path: Path) -> None:
    r = render_chart(SCENARIOS[scenario])
    env = pod_environment(r, OPERATOR_SECRETS)
    result = check_config(r, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok (1 upstreams, 3 models)" in result.stdout
    assert "$(" not in env["TOLLGATE_DATABASE_URL"]


def test_a_longer_drain_in_values_config_passes_check_config_too(tmp_path: Path) -> None:
    values: dict[str, Any] = {"config": {"server": {"shutdown_grace": 120}}}
    r = render_chart(values)
    result = check_config(r, pod_environment(r, OPERATOR_SECRETS), tmp_path)
    assert result.returncode == 0, result.stderr


def test_without_the_admin_secret_the_gateway_names_the_missing_variable(tmp_path: Path) -> None:
    r = render_chart({})
    result = check_config(r, pod_environment(r, {"OPENAI_API_KEY": "sk-operator"}), tmp_path)
    assert result.returncode == 1
    assert "listeners.admin.token: environment variable TOLLGATE_ADMIN_TOKEN is not set" in result.stderr


def get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read().decode()


def test_a_gateway_started_as_the_container_answers_the_probes_and_serves_the_scaling_metric(tmp_path: Path) -> None:
    public, admin = free_port(), free_port()
    r = render_chart({"ports": {"public": public, "admin": admin}})
    c = container(r)
    config = yaml.safe_load(r.one("ConfigMap")["data"]["gateway.yaml"])
    config["listeners"]["public"]["host"] = "127.0.0.1"  # the pod binds every address; a test binds loopback only
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    args = [str(path) if a == "/etc/tollgate/gateway.yaml" else a for a in c["args"]]
    env = pod_environment(r, OPERATOR_SECRETS)
    env["TOLLGATE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'tollgate.db'}"  # the pod's /var/lib/tollgate volume
    with owned(start_process([TOLLGATE, *args], public, env=env)) as proc:
        wait_for_port(admin, proc=proc.popen)
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            status, _ = get(f"http://127.0.0.1:{public}{c[probe]['httpGet']['path']}")
            assert status == 200, probe
        status, metrics = get(f"http://127.0.0.1:{admin}/metrics", OPERATOR_SECRETS["TOLLGATE_ADMIN_TOKEN"])
        assert status == 200
        assert "tollgate_in_flight_requests" in metrics  # what the chart's KEDA query sums
        proc.signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=30) == 0

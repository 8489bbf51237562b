"""Where helm is installed (on PATH, or named by $HELM), the renderer's output equals `helm template`'s for every
scenario the chart tests use, checksums included, and helm refuses the same values with the same messages.
Without helm these tests are skipped: the renderer's own tests (test_gotemplate.py) stand in for it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..support.chart import CHART, render_chart
from ..support.gotemplate import TemplateError
from .test_chart import SCENARIOS

HELM = os.environ.get("HELM") or shutil.which("helm")

pytestmark = [pytest.mark.process, pytest.mark.skipif(HELM is None, reason="helm is not installed")]


def helm_template(values: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return subprocess.run(
        [HELM, "template", "tollgate", str(CHART), "--namespace", "gw", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def by_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_renders_what_the_renderer_renders(scenario: str, tmp_path: Path) -> None:
    result = helm_template(SCENARIOS[scenario], tmp_path)
    assert result.returncode == 0, result.stderr
    theirs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert by_name(theirs) == by_name(render_chart(SCENARIOS[scenario], namespace="gw").objects)


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 2},
        {"config": {"server": {"shutdown_grace": "30s"}}},
        {"config": {"listeners": {}}},
        {"podDisruptionBudget": {"enabled": True, "minAvailable": 1}},
        {"podDisruptionBudget": {"enabled": True, "minAvailable": 1, "maxUnavailable": "25%"}},
        {"serviceMonitor": {"enabled": True}, "networkPolicy": {"enabled": True, "metricsFrom": []}},
        {"config": {"scaling": {"pools": {"p": {"model": "gpt-4o", "actuator": {"type": "kubernetes"}}}}}},
    ],
)
def test_helm_refuses_what_the_renderer_refuses_with_the_same_message(values: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as refused:
        render_chart(values, namespace="gw")
    result = helm_template(values, tmp_path)
    assert result.returncode != 0
    assert str(refused.value) in result.stderr

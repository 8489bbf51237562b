"""What the chart gives an operator running a fleet: pods rolled by a change of a Secret the chart makes."""

from __future__ import annotations

from typing import Any

from ..support.chart import merge_values, render_chart
from .test_chart import SCENARIOS, deployment

# ---------------------------------------------------------------------------------------------------------------
# Secret checksums


def pod_annotations(values: dict[str, Any]) -> dict[str, str]:
    return dict(deployment(render_chart(values))["spec"]["template"]["metadata"]["annotations"])


def secret_data(values: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {s["metadata"]["name"]: s["stringData"] for s in render_chart(values).all("Secret")}


def test_a_secret_the_chart_makes_rolls_the_pods_when_and_only_when_it_changes() -> None:
    base: dict[str, Any] = SCENARIOS["secrets-made-by-the-chart"]
    variants: dict[str, dict[str, Any]] = {
        "same": {},
        "admin token": {"adminSecret": {"token": "another-admin-token-of-32-chars!"}},
        "extra token": {"adminSecret": {"extraTokens": {"TOLLGATE_GRAFANA_TOKEN": "rotated-viewer-token"}}},
        "new extra token": {"adminSecret": {"extraTokens": {"TOLLGATE_CI_TOKEN": "a-token-for-the-ci-job"}}},
        "upstream key": {"upstreamSecret": {"keys": {"OPENAI_API_KEY": "sk-rotated"}}},
        "new upstream key": {"upstreamSecret": {"keys": {"MISTRAL_API_KEY": "mk-new"}}},
        "config": {"config": {"server": {"shutdown_grace": 31}}},
        "resources": {"resources": {"requests": {"cpu": "1"}}},
    }
    before, before_data = pod_annotations(base), secret_data(base)
    assert set(before) == {"checksum/config", "checksum/admin-secret", "checksum/upstream-secret"}
    for what, change in variants.items():
        values = merge_values(base, change)
        after, after_data = pod_annotations(values), secret_data(values)
        for secret, annotation in (
            ("tollgate-admin", "checksum/admin-secret"),
            ("tollgate-upstreams", "checksum/upstream-secret"),
        ):
            moved = after[annotation] != before[annotation]
            assert moved == (after_data[secret] != before_data[secret]), f"{what}: {annotation}"
        assert (after["checksum/config"] != before["checksum/config"]) == (what == "config"), what


def test_no_secret_checksum_for_secrets_the_chart_does_not_make() -> None:
    for values in ({}, SCENARIOS["existing-secrets"]):
        assert set(pod_annotations(values)) == {"checksum/config"}
    only_admin = pod_annotations({"adminSecret": {"token": "an-admin-token-of-32-characters!"}})
    assert set(only_admin) == {"checksum/config", "checksum/admin-secret"}
    with_pod_annotations = pod_annotations({**SCENARIOS["secrets-made-by-the-chart"], "podAnnotations": {"team": "ai"}})
    assert with_pod_annotations["team"] == "ai" and "checksum/upstream-secret" in with_pod_annotations

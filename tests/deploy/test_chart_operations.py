"""What the chart gives an operator running a fleet, each off by default: a PodDisruptionBudget that a node drain can
always satisfy, a NetworkPolicy whose peers and ports are the ones asked for, pods rolled by a change of a Secret the
chart makes, and for the Kubernetes scaling actuator a Role granting exactly the calls the actuator makes."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tollgate.config.scaling import Actuator as ActuatorConfig
from tollgate.scaling.actuators import KubernetesScale

from ..support.chart import Rendered, merge_values, render_chart
from ..support.gotemplate import TemplateError
from .test_chart import FLEET, SCENARIOS, assert_valid_for_kubernetes, container, deployment, gateway_config

# ---------------------------------------------------------------------------------------------------------------
# PodDisruptionBudget


def budget(values: dict[str, Any]) -> dict[str, Any]:
    return dict(
        render_chart({**values, "podDisruptionBudget": {"enabled": True, **values["podDisruptionBudget"]}}).one(
            "PodDisruptionBudget"
        )["spec"]
    )


def test_no_disruption_budget_network_policy_or_role_unless_asked() -> None:
    kinds = render_chart({}).kinds()
    for kind in ("PodDisruptionBudget", "NetworkPolicy", "Role", "RoleBinding"):
        assert kind not in kinds


def test_the_budget_selects_exactly_the_gateways_pods_and_defaults_to_one_pod_at_a_time() -> None:
    r = render_chart({"podDisruptionBudget": {"enabled": True}})
    assert_valid_for_kubernetes(r)
    spec = r.one("PodDisruptionBudget")["spec"]
    assert spec["maxUnavailable"] == 1 and "minAvailable" not in spec
    d = deployment(r)
    assert spec["selector"] == d["spec"]["selector"]
    pod_labels = d["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize(
    ("values", "field", "written"),
    [
        ({**FLEET, "replicaCount": 3, "podDisruptionBudget": {"minAvailable": 2}}, "minAvailable", 2),
        ({**FLEET, "replicaCount": 3, "podDisruptionBudget": {"minAvailable": "2"}}, "minAvailable", 2),
        ({**FLEET, "replicaCount": 3, "podDisruptionBudget": {"minAvailable": "66%"}}, "minAvailable", "66%"),
        ({"podDisruptionBudget": {"maxUnavailable": "25%"}}, "maxUnavailable", "25%"),
        ({**FLEET, "autoscaling": {"enabled": True}, "podDisruptionBudget": {"minAvailable": 1}}, "minAvailable", 1),
    ],
)
def test_a_budget_is_written_as_given_and_valid(values: dict[str, Any], field: str, written: Any) -> None:
    r = render_chart({**values, "podDisruptionBudget": {"enabled": True, **values["podDisruptionBudget"]}})
    assert_valid_for_kubernetes(r)
    spec = r.one("PodDisruptionBudget")["spec"]
    assert spec[field] == written
    assert set(spec) == {field, "selector"}


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        (
            {"minAvailable": 1, "maxUnavailable": "25%"},
            r"^podDisruptionBudget: give minAvailable \(1\) or maxUnavailable \(25%\), not both$",
        ),
        ({"minAvailable": 1}, r"minAvailable: 1 never lets a pod be evicted at replicaCount 1, so node drains"),
        ({"minAvailable": "100%"}, r"minAvailable: 100% never lets a pod be evicted at replicaCount 1"),
        ({"minAvailable": "50%"}, r"minAvailable: 50% never lets a pod be evicted at replicaCount 1"),
        ({"maxUnavailable": 0}, r"maxUnavailable: 0 never lets a pod be evicted at replicaCount 1"),
        ({"maxUnavailable": "0%"}, r"maxUnavailable: 0% never lets a pod be evicted"),
        ({"maxUnavailable": "two"}, r"maxUnavailable: two is neither a whole number nor a percentage"),
        ({"minAvailable": 1.5}, r"minAvailable: 1\.5 is neither a whole number nor a percentage"),
    ],
)
def test_a_budget_that_names_both_fields_or_blocks_every_drain_is_refused(values: dict[str, Any], refusal: str) -> None:
    with pytest.raises(TemplateError, match=refusal):
        render_chart({"podDisruptionBudget": {"enabled": True, **values}})


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        (
            {**FLEET, "replicaCount": 3, "podDisruptionBudget": {"minAvailable": 3}},
            r"minAvailable: 3 never lets a pod be evicted at replicaCount 3",
        ),
        (
            {**FLEET, "autoscaling": {"enabled": True, "minReplicas": 2}, "podDisruptionBudget": {"minAvailable": 2}},
            r"minAvailable: 2 never lets a pod be evicted at autoscaling\.minReplicas 2",
        ),
        (
            {
                **FLEET,
                "keda": {"enabled": True, "minReplicas": 0},
                "serviceMonitor": {"enabled": True},
                "podDisruptionBudget": {"minAvailable": 1},
            },
            r"minAvailable: 1 never lets a pod be evicted at keda\.minReplicas 0",
        ),
    ],
)
def test_the_budget_is_checked_at_the_fewest_pods_the_release_runs(values: dict[str, Any], refusal: str) -> None:
    with pytest.raises(TemplateError, match=refusal):
        budget(values)


def allowed_disruptions(field: str, value: int | str, pods: int) -> int:
    """Kubernetes' disruption controller: a percentage scaled to the pods and rounded up (for both fields)."""
    if isinstance(value, str):
        scaled = math.ceil(int(value.removesuffix("%")) * pods / 100)
    else:
        scaled = value
    return max(0, pods - scaled) if field == "minAvailable" else max(0, min(scaled, pods))


@pytest.mark.parametrize("pods", [1, 2, 3, 7])
def test_the_chart_refuses_a_budget_exactly_when_kubernetes_would_never_allow_an_eviction(pods: int) -> None:
    fleet = FLEET if pods > 1 else {}
    candidates: list[int | str] = [0, 1, 2, 3, 4, 7, 8, "0%", "1%", "10%", "34%", "50%", "66%", "67%", "99%", "100%"]
    for field in ("minAvailable", "maxUnavailable"):
        for value in candidates:
            values = {**fleet, "replicaCount": pods, "podDisruptionBudget": {field: value}}
            if allowed_disruptions(field, value, pods) > 0:
                assert budget(values)[field] == value, (field, value, pods)
            else:
                with pytest.raises(TemplateError, match="never lets a pod be evicted"):
                    budget(values)


# ---------------------------------------------------------------------------------------------------------------
# NetworkPolicy


def policy(values: dict[str, Any]) -> tuple[Rendered, dict[str, Any]]:
    r = render_chart(values)
    return r, r.one("NetworkPolicy")["spec"]


def container_port(r: Rendered, name: str) -> int:
    return int(next(p["containerPort"] for p in container(r)["ports"] if p["name"] == name))


def test_the_policy_lets_the_cluster_reach_the_public_port_only_and_leaves_egress_open() -> None:
    r, spec = policy({"networkPolicy": {"enabled": True}})
    assert_valid_for_kubernetes(r)
    assert spec["podSelector"] == deployment(r)["spec"]["selector"]
    assert spec["policyTypes"] == ["Ingress"]  # egress unrestricted: upstream providers are on the internet
    assert "egress" not in spec
    assert spec["ingress"] == [
        {"ports": [{"port": container_port(r, "http"), "protocol": "TCP"}], "from": [{"namespaceSelector": {}}]}
    ]
    admin = container_port(r, "admin")
    assert all(p["port"] != admin for rule in spec["ingress"] for p in rule["ports"]), "the admin port is open"


def test_the_admin_port_opens_to_prometheus_and_the_listed_peers_only() -> None:
    r, spec = policy(SCENARIOS["network-policy"])
    assert_valid_for_kubernetes(r)
    admin = container_port(r, "admin")
    admin_rules = [rule for rule in spec["ingress"] if rule["ports"] == [{"port": admin, "protocol": "TCP"}]]
    assert [rule["from"] for rule in admin_rules] == [
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ops-console"}}}],
    ]
    public_rules = [rule for rule in spec["ingress"] if rule not in admin_rules]
    assert public_rules == [
        {"ports": [{"port": container_port(r, "http"), "protocol": "TCP"}], "from": [{"namespaceSelector": {}}]}
    ]
    # the ServiceMonitor scrapes that very port
    assert r.one("Service", "tollgate-metrics")["spec"]["ports"][0]["port"] == admin


def test_the_admin_listener_leaves_loopback_only_for_the_peers_the_policy_admits() -> None:
    ops = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ops-console"}}}]
    listens: dict[str, dict[str, Any]] = {
        "policy without admin peers": {"networkPolicy": {"enabled": True}},
        "admin peers without a policy": {"networkPolicy": {"adminFrom": ops}},
        "admin peers in a policy": {"networkPolicy": {"enabled": True, "adminFrom": ops}},
    }
    hosts = {
        what: gateway_config(render_chart(values))["listeners"]["admin"]["host"] for what, values in listens.items()
    }
    assert hosts == {
        "policy without admin peers": "127.0.0.1",
        "admin peers without a policy": "127.0.0.1",
        "admin peers in a policy": "0.0.0.0",
    }


def test_the_policys_ports_follow_the_containers_and_publicfrom_replaces_the_cluster() -> None:
    ingress_controller = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
        {"ipBlock": {"cidr": "203.0.113.0/24"}},
    ]
    values = {
        "ports": {"public": 9000, "admin": 9001},
        "networkPolicy": {"enabled": True, "publicFrom": ingress_controller},
    }
    r, spec = policy(values)
    assert_valid_for_kubernetes(r)
    assert spec["ingress"] == [{"ports": [{"port": 9000, "protocol": "TCP"}], "from": ingress_controller}]
    assert container_port(r, "http") == 9000
    _, everyone = policy({"networkPolicy": {"enabled": True, "publicFrom": []}})
    assert everyone["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]  # no peers: every source


def test_restricted_egress_keeps_dns_and_adds_exactly_the_listed_rules() -> None:
    r, spec = policy(SCENARIOS["network-policy"])
    assert_valid_for_kubernetes(r)
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    dns, *listed = spec["egress"]
    assert dns == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    assert listed == SCENARIOS["network-policy"]["networkPolicy"]["egress"]


def test_a_policy_that_would_shut_prometheus_out_is_refused() -> None:
    values = {"serviceMonitor": {"enabled": True}, "networkPolicy": {"enabled": True, "metricsFrom": []}}
    with pytest.raises(TemplateError, match=r"^networkPolicy\.metricsFrom: serviceMonitor\.enabled needs Prometheus"):
        render_chart(values)


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


# ---------------------------------------------------------------------------------------------------------------
# RBAC of the Kubernetes scaling actuator


def token_mounted(r: Rendered) -> tuple[bool, bool | None]:
    """(the pod's automountServiceAccountToken, the ServiceAccount's: None when the chart makes none)."""
    pod = deployment(r)["spec"]["template"]["spec"]["automountServiceAccountToken"]
    account = r.one("ServiceAccount")["automountServiceAccountToken"] if "ServiceAccount" in r.kinds() else None
    return pod, account


def test_without_a_kubernetes_actuator_there_is_no_role_and_no_token() -> None:
    gauge_only = {"config": {"scaling": {"pools": {"p": {"model": "gpt-4o", "targets": {"inflight_per_replica": 8}}}}}}
    webhook = {
        "config": {
            "scaling": {
                "pools": {
                    "p": {
                        "model": "gpt-4o",
                        "targets": {"inflight_per_replica": 8},
                        "actuator": {"type": "webhook", "url": "https://ops/hook", "secret": "s" * 16},
                    }
                }
            }
        }
    }
    for values in ({}, gauge_only, webhook):
        r = render_chart(values)
        assert not {"Role", "RoleBinding"} & set(r.kinds())
        assert token_mounted(r) == (False, False)
    assert token_mounted(render_chart({"serviceAccount": {"automountToken": True}})) == (True, True)


def test_the_role_grants_patch_on_exactly_the_named_deployments_scale_in_each_namespace() -> None:
    r = render_chart(SCENARIOS["kubernetes-scaling"], namespace="gw")
    assert_valid_for_kubernetes(r)
    roles = {o["metadata"]["namespace"]: o for o in r.all("Role")}
    bindings = {o["metadata"]["namespace"]: o for o in r.all("RoleBinding")}
    assert sorted(roles) == sorted(bindings) == ["gw", "models"]  # the release's namespace, then the pool's own
    for namespace, deployments in (("gw", ["vllm-gpt"]), ("models", ["vllm-mini"])):
        assert roles[namespace]["rules"] == [
            {
                "apiGroups": ["apps"],
                "resources": ["deployments/scale"],
                "resourceNames": deployments,
                "verbs": ["patch"],
            }
        ]
        binding = bindings[namespace]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[namespace]["metadata"]["name"],
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tollgate", "namespace": "gw"}]
    assert token_mounted(r) == (True, True)


def test_pools_sharing_a_namespace_share_one_role_listing_each_deployment_once() -> None:
    def pool(deployment_name: str) -> dict[str, Any]:
        return {
            "model": "gpt-4o",
            "targets": {"inflight_per_replica": 8},
            "actuator": {"type": "kubernetes", "deployment": deployment_name},
        }

    values = {"config": {"scaling": {"pools": {"a": pool("vllm-b"), "b": pool("vllm-a"), "c": pool("vllm-b")}}}}
    (role,) = render_chart(values).all("Role")
    assert role["rules"][0]["resourceNames"] == ["vllm-a", "vllm-b"]


def test_the_binding_names_the_service_account_the_pods_run_as() -> None:
    values = {**SCENARIOS["kubernetes-scaling"], "serviceAccount": {"create": False, "name": "platform-gateway"}}
    r = render_chart(values)
    assert deployment(r)["spec"]["template"]["spec"]["serviceAccountName"] == "platform-gateway"
    for binding in r.all("RoleBinding"):
        assert binding["subjects"][0]["name"] == "platform-gateway"
    assert token_mounted(r) == (True, None)


def test_rbac_create_false_leaves_the_grant_to_the_operator_but_mounts_the_token() -> None:
    r = render_chart({**SCENARIOS["kubernetes-scaling"], "rbac": {"create": False}})
    assert not {"Role", "RoleBinding"} & set(r.kinds())
    assert token_mounted(r) == (True, True)


def test_a_kubernetes_actuator_without_a_deployment_is_refused() -> None:
    values = {
        "config": {
            "scaling": {
                "pools": {
                    "p": {"model": "gpt-4o", "targets": {"inflight_per_replica": 8}, "actuator": {"type": "kubernetes"}}
                }
            }
        }
    }
    with pytest.raises(TemplateError, match=r"^config\.scaling\.pools\.p\.actuator\.deployment: a kubernetes actuator"):
        render_chart(values)


_API_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/v1/namespaces/(?P<ns>[^/]+)/(?P<res>[^/]+)/(?P<name>[^/]+)/(?P<sub>[^/]+)$"
)
_VERBS = {"GET": "get", "PATCH": "patch", "PUT": "update", "POST": "create", "DELETE": "delete"}


async def test_the_roles_grant_exactly_the_requests_the_actuator_makes(tmp_path: Path) -> None:
    """The gateway's own actuator, run for each pool of the rendered config against a recording API server: every
    request it makes is allowed by a Role bound to the pods' service account, and the Roles allow nothing else."""
    release_namespace = "gw"
    r = render_chart(SCENARIOS["kubernetes-scaling"], namespace=release_namespace)
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "namespace").write_text(release_namespace + "\n")  # the service account's namespace, as mounted
    requests: list[tuple[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        requests.append((request.method, request.path))
        return web.json_response({"kind": "Scale"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    async with TestServer(app) as server:
        for name, pool in gateway_config(r)["scaling"]["pools"].items():
            settings = pool.get("actuator", {})
            if settings.get("type") != "kubernetes":
                continue
            actuator = KubernetesScale(
                ActuatorConfig(
                    **settings,
                    api_server=str(server.make_url("")).rstrip("/"),
                    token_path=str(tmp_path / "token"),
                    namespace_path=str(tmp_path / "namespace"),
                    retries=0,
                )
            )
            await actuator.apply(name, 3, {})
            await actuator.close()

    made = set()
    for method, path in requests:
        m = _API_PATH.match(path)
        assert m is not None, path
        made.add((m["ns"], _VERBS[method], m["group"], f"{m['res']}/{m['sub']}", m["name"]))
    assert len(made) == 2
    account = deployment(r)["spec"]["template"]["spec"]["serviceAccountName"]
    bound = {
        (b["metadata"]["namespace"], b["roleRef"]["name"])
        for b in r.all("RoleBinding")
        if {"kind": "ServiceAccount", "name": account, "namespace": release_namespace} in b["subjects"]
    }
    granted = {
        (role["metadata"]["namespace"], verb, group, resource, name)
        for role in r.all("Role")
        if (role["metadata"]["namespace"], role["metadata"]["name"]) in bound
        for rule in role["rules"]
        for verb in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for name in rule["resourceNames"]
    }
    assert granted == made

"""deploy/helm/tollgate rendered with its defaults and with each optional object turned on: every object valid against
the Kubernetes JSON schemas (custom resources against their own small schemas), and the behaviours an operator
relies on: the admin port behind no Service, the probes, the stop budget, a non-root pod, a config change rolling the
pods, a fleet refused without shared state; deploy/k8s equal to the default rendering."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ..support.chart import CHART, K8S, Rendered, plain_manifest_files, render_chart
from ..support.gotemplate import TemplateError
from .crd_schemas import CRD_SCHEMAS

FLEET = {"redis": {"url": "redis://redis:6379/0"}, "database": {"url": "postgresql://tollgate@postgres:5432/tollgate"}}

# Each optional object turned on (and what it needs); the defaults first.
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "secrets-made-by-the-chart": {
        "adminSecret": {
            "token": "an-admin-token-of-32-characters!",
            "extraTokens": {"TOLLGATE_GRAFANA_TOKEN": "a-viewer-token-for-grafana"},
        },
        "upstreamSecret": {"keys": {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"}},
    },
    "existing-secrets": {"adminSecret": {"existingSecret": "ops-admin"}, "upstreamSecret": {"existingSecret": "keys"}},
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
    "hpa": {**FLEET, "autoscaling": {"enabled": True}},
    "keda": {**FLEET, "keda": {"enabled": True}, "serviceMonitor": {"enabled": True}, "workers": 2},
    "pvc": {"persistence": {"enabled": True, "storageClass": "fast-ssd", "size": "5Gi"}},
    "fleet-of-three": {
        "replicaCount": 3,
        "workers": 4,
        "redis": {**FLEET["redis"], "options": {"timeout": "50ms"}},
        "database": {"url": "postgresql://tollgate:$(PGPASSWORD)@postgres:5432/tollgate", "options": {"pool_size": 5}},
        "extraEnv": [{"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "postgres", "key": "password"}}}],
    },
    "disruption-budget": {**FLEET, "replicaCount": 3, "podDisruptionBudget": {"enabled": True, "minAvailable": "50%"}},
    "network-policy": {
        "serviceMonitor": {"enabled": True},
        "networkPolicy": {
            "enabled": True,
            "adminFrom": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ops-console"}}}],
            "egress": [
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": 443}]},
                {"to": [{"podSelector": {"matchLabels": {"app": "redis"}}}], "ports": [{"port": 6379}]},
            ],
        },
    },
    "kubernetes-scaling": {
        "config": {
            "scaling": {
                "pools": {
                    "gpt-4o-pool": {
                        "model": "gpt-4o",
                        "targets": {"inflight_per_replica": 8},
                        "actuator": {"type": "kubernetes", "deployment": "vllm-gpt"},
                    },
                    "mini-pool": {
                        "model": "gpt-4o-mini",
                        "targets": {"inflight_per_replica": 8},
                        "actuator": {"type": "kubernetes", "namespace": "models", "deployment": "vllm-mini"},
                    },
                    "advisor-only": {"model": "gpt-4o-mini", "targets": {"inflight_per_replica": 8}},
                }
            }
        }
    },
}
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.25", kubernetes_validate.utils.latest_version())


def rendered(name: str) -> Rendered:
    return render_chart(SCENARIOS[name])


def deployment(r: Rendered) -> dict[str, Any]:
    return r.one("Deployment")


def container(r: Rendered) -> dict[str, Any]:
    containers = deployment(r)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def gateway_config(r: Rendered) -> dict[str, Any]:
    config = yaml.safe_load(r.one("ConfigMap")["data"]["gateway.yaml"])
    assert isinstance(config, dict)
    return config


def assert_valid_for_kubernetes(r: Rendered) -> None:
    """Every object valid for the oldest and the newest Kubernetes known (custom resources for their operator)."""
    assert r.objects, "the chart rendered nothing"
    for obj in r.objects:
        schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if schema is not None:
            jsonschema.Draft202012Validator(schema).validate(obj)
            continue
        for k8s in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, k8s, strict=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_valid_for_kubernetes(scenario: str) -> None:
    assert_valid_for_kubernetes(rendered(scenario))


def test_the_validators_refuse_what_kubernetes_or_the_operators_would() -> None:
    """The checks above have teeth: a mistyped field, a wrong type, a missing required field all fail."""
    d = deployment(rendered("defaults"))
    bad = yaml.safe_load(yaml.safe_dump(d))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.25", strict=True)
    bad = yaml.safe_load(yaml.safe_dump(d))
    bad["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = "10001"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.25", strict=True)
    scaled = rendered("keda").one("ScaledObject")
    del scaled["spec"]["scaleTargetRef"]["name"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")]).validate(scaled)


def test_defaults_make_a_configmap_deployment_service_and_service_account_and_no_secret() -> None:
    """No admin token is invented: the pods wait for a Secret the operator creates (NOTES.txt says how)."""
    r = rendered("defaults")
    assert sorted(r.kinds()) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    made = rendered("secrets-made-by-the-chart")
    assert sorted(made.one("Secret", "tollgate-admin")["stringData"]) == [
        "TOLLGATE_ADMIN_TOKEN",
        "TOLLGATE_GRAFANA_TOKEN",
    ]
    assert "kubectl -n default create secret generic tollgate-admin" in r.notes
    env_from = container(r)["envFrom"]
    assert env_from == [
        {"secretRef": {"name": "tollgate-admin"}},
        {"secretRef": {"name": "tollgate-upstreams", "optional": True}},
    ]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_service_exposes_the_admin_port_unless_monitoring_asks_for_a_headless_one(scenario: str) -> None:
    r = rendered(scenario)
    admin = container(r)["ports"][1]
    assert admin["name"] == "admin"
    for service in r.all("Service"):
        ports = service["spec"]["ports"]
        exposes_admin = any(p["targetPort"] in ("admin", admin["containerPort"]) for p in ports)
        if service["metadata"]["name"].endswith("-metrics"):
            assert SCENARIOS[scenario].get("serviceMonitor", {}).get("enabled"), "a metrics Service without monitoring"
            assert service["spec"]["clusterIP"] == "None", "the admin port behind a load-balanced cluster IP"
            assert exposes_admin
        else:
            assert not exposes_admin, f"{service['metadata']['name']} exposes the admin port"
            assert [p["targetPort"] for p in ports] == ["http"]


def test_the_admin_listener_stays_on_loopback_unless_prometheus_scrapes_it() -> None:
    assert gateway_config(rendered("defaults"))["listeners"]["admin"]["host"] == "127.0.0.1"
    monitored = rendered("service-monitor")
    assert gateway_config(monitored)["listeners"]["admin"]["host"] == "0.0.0.0"
    endpoint = monitored.one("ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": "tollgate-admin", "key": "TOLLGATE_ADMIN_TOKEN"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_ask_the_public_port_for_healthz_and_readyz(scenario: str) -> None:
    c = container(rendered(scenario))
    public = c["ports"][0]
    assert public == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway_config(rendered(scenario))["listeners"]["public"]["port"] == public["containerPort"]


@pytest.mark.parametrize("grace", [None, 30, 120, "45"])
def test_termination_grace_covers_the_pre_stop_pause_and_the_gateways_drain(grace: Any) -> None:
    values = {} if grace is None else {"config": {"server": {"shutdown_grace": grace}}}
    r = render_chart(values)
    pod = deployment(r)["spec"]["template"]["spec"]
    shutdown_grace = gateway_config(r).get("server", {}).get("shutdown_grace", 30)
    pre_stop = container(r)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + int(shutdown_grace)


def test_a_shutdown_grace_the_chart_cannot_read_as_seconds_is_refused() -> None:
    with pytest.raises(TemplateError, match=r"config\.server\.shutdown_grace: write it as a whole number of seconds"):
        render_chart({"config": {"server": {"shutdown_grace": "30s"}}})


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_pod_runs_as_numeric_non_root_ids_on_a_read_only_root(scenario: str) -> None:
    r = rendered(scenario)
    pod = deployment(r)["spec"]["template"]["spec"]
    ctx = pod["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == 10001 and ctx["runAsGroup"] == 10001
    c = container(r)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert set(mounts) == {"/etc/tollgate", "/var/lib/tollgate", "/tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    data = volumes[mounts["/var/lib/tollgate"]]
    strategy = deployment(r)["spec"].get("strategy")
    if SCENARIOS[scenario].get("persistence", {}).get("enabled"):
        assert data["persistentVolumeClaim"]["claimName"] == r.one("PersistentVolumeClaim")["metadata"]["name"]
        assert strategy == {"type": "Recreate"}, "two pods at once on the SQLite file's volume"
    else:
        assert data == {"name": "data", "emptyDir": {}}
        assert strategy is None


def test_a_config_change_changes_the_pods_checksum_and_nothing_else_does() -> None:
    def checksum(values: dict[str, Any]) -> str:
        return str(deployment(render_chart(values))["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = checksum({})
    assert checksum({"resources": {"requests": {"cpu": "1"}}}) == base
    assert checksum({"config": {"server": {"shutdown_grace": 31}}}) != base
    assert checksum({"redis": FLEET["redis"]}) != base  # the store section the chart writes is part of the file
    assert checksum(SCENARIOS["secrets-made-by-the-chart"]) == base  # a Secret has checksums of its own


def test_redis_and_database_urls_reach_the_config_as_environment_variables() -> None:
    r = rendered("fleet-of-three")
    names = [e["name"] for e in container(r)["env"]]
    env = {e["name"]: e.get("value") for e in container(r)["env"]}
    assert env["TOLLGATE_REDIS_URL"] == "redis://redis:6379/0"
    assert env["TOLLGATE_DATABASE_URL"] == "postgresql://tollgate:$(PGPASSWORD)@postgres:5432/tollgate"
    # Kubernetes expands $(VAR) only from variables defined before the entry
    assert names.index("PGPASSWORD") < names.index("TOLLGATE_DATABASE_URL")
    config = gateway_config(r)
    assert config["store"] == {"backend": "redis", "url": "${TOLLGATE_REDIS_URL}", "timeout": "50ms"}
    assert config["database"] == {"url": "${TOLLGATE_DATABASE_URL}", "pool_size": 5}
    assert container(r)["args"][-2:] == ["--workers", "4"]
    assert deployment(r)["spec"]["replicas"] == 3
    defaults = container(rendered("defaults"))
    assert {e["name"]: e["value"] for e in defaults["env"]} == {
        "TOLLGATE_DATABASE_URL": "sqlite:////var/lib/tollgate/tollgate.db"
    }


def test_autoscalers_target_the_deployment_and_leave_its_replicas_to_them() -> None:
    hpa = rendered("hpa")
    assert hpa.one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == deployment(hpa)["metadata"]["name"]
    assert "replicas" not in deployment(hpa)["spec"]
    keda = rendered("keda")
    scaled = keda.one("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == deployment(keda)["metadata"]["name"]
    assert "replicas" not in deployment(keda)["spec"]
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["query"] == (
        'sum(tollgate_in_flight_requests{namespace="default", service="tollgate-metrics"})'
    )
    assert "HorizontalPodAutoscaler" not in keda.kinds()


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        ({"replicaCount": 2}, r"redis\.url: more than one pod"),
        ({"replicaCount": 2, "redis": FLEET["redis"]}, r"database\.url: more than one pod"),
        ({"autoscaling": {"enabled": True}}, r"redis\.url"),
        ({"workers": 4}, r"redis\.url: workers other than 1"),
        ({**FLEET, "autoscaling": {"enabled": True}, "keda": {"enabled": True}}, "choose one"),
        ({**FLEET, "keda": {"enabled": True}}, r"keda\.enabled: needs serviceMonitor\.enabled"),
        ({"config": {"listeners": {}}}, r"config\.listeners: set ports"),
        ({"config": {"store": {"backend": "redis"}}}, r"config\.store: set redis\.url"),
        ({"adminSecret": {"token": "t" * 20, "existingSecret": "x"}}, "give token or existingSecret, not both"),
    ],
)
def test_settings_that_would_misbehave_are_refused_at_render_naming_the_value(
    values: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(TemplateError, match=refusal):
        render_chart(values)


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == version("tollgate")
    image = container(rendered("defaults"))["image"]
    assert image == f"tollgate:{version('tollgate')}"


def test_plain_manifests_are_the_charts_default_rendering() -> None:
    wanted = plain_manifest_files()
    present = {p.name: p.read_text() for p in sorted(K8S.glob("*.yaml"))}
    hint = "deploy/k8s drifted from the chart: run `python -m tests.support.chart --write-k8s`"
    assert sorted(present) == sorted(wanted), hint
    for name, text in wanted.items():
        assert present[name] == text, f"{name}: {hint}"
    plain = [doc for text in present.values() for doc in yaml.safe_load_all(text) if doc]
    helm = rendered("defaults").objects
    for obj in helm:
        obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "kubectl"
        template = obj.get("spec", {}).get("template", {}).get("metadata", {})
        if template:
            template["labels"]["app.kubernetes.io/managed-by"] = "kubectl"
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(plain, key=key) == sorted(helm, key=key)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_notes_render_and_name_the_service(scenario: str) -> None:
    notes = rendered(scenario).notes
    assert "http://tollgate.default.svc:80/v1" in notes
    assert "port-forward deploy/tollgate 8081" in notes

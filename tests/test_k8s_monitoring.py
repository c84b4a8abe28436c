"""k8s/monitoring: every alert and dashboard query parses as PromQL and names only metrics
that exist, and the scrape configs select the pods and ports the manifests really have."""

from __future__ import annotations

import json
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry

from jetserve.k8s import OVERLAYS, RenderOptions, render_file
from natsio.routes import RouteMetrics
from producer.http.metrics import BridgeMetrics
from scheduler.metrics import SchedulerMetrics
from workers.metrics import WorkerMetrics

from .k8s_check import K8S, REPO, kustomize, load_all

MONITORING = K8S / "monitoring"
#: Series of the prometheus-nats-exporter sidecar of the NATS chart (`-jsz=all -prefix=nats`).
NATS_EXPORTER = {"nats_consumer_num_pending", "nats_consumer_num_ack_pending"}
NATS_EXPORTER |= {"nats_stream_total_messages"}


def _series() -> set[str]:
    """Every series name the worker, the bridge and the scheduler export, as Prometheus
    stores them."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    names: set[str] = set()
    for metrics in (
        WorkerMetrics(CollectorRegistry()),
        BridgeMetrics(CollectorRegistry()),
        SchedulerMetrics(CollectorRegistry()),
        RouteMetrics(CollectorRegistry()),
    ):
        names |= {
            family.name + suffix
            for family in metrics.registry.collect()
            for suffix in suffixes[family.type]
        }
    return names


#: Series Prometheus itself makes for every scrape target.
PROMETHEUS = {"up"}
KNOWN = _series() | NATS_EXPORTER | PROMETHEUS


def _selectors(expr: str) -> set[str]:
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.add(str(node.name))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert doc["kind"] == "PrometheusRule"
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def test_alert_rules_parse_and_use_real_metrics() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} == {
        "JetserveBacklogGrowing",
        "JetserveNoWorkers",
        "JetserveDeadLetters",
        "JetserveDeadLetterStreamGrowing",
        "JetserveNoActiveScheduler",
        "JetserveWebhooksDead",
        "JetserveHTTPServerErrors",
        "JetserveNatsExporterAbsent",
        "JetserveBridgeDown",
    }
    used: set[str] = set()
    for rule in rules:
        names = _selectors(rule["expr"])
        assert names <= KNOWN, f"{rule['alert']}: unknown metrics {names - KNOWN}"
        used |= names
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
    # The three alerts rest on these series.
    assert "jetserve_queue_pending" in used  # backlog growing
    assert {"nats_consumer_num_pending", "jetserve_worker_capacity"} <= used  # no workers
    assert {"jetserve_worker_errors_total", "nats_stream_total_messages"} <= used  # dead letters
    no_workers = next(r for r in rules if r["alert"] == "JetserveNoWorkers")
    assert 'code="dead_lettered"' in next(
        r["expr"] for r in rules if r["alert"] == "JetserveDeadLetters"
    )
    assert "unless on (model)" in no_workers["expr"]
    # ... and the bridge's and the scheduler's.
    assert {
        "jetserve_scheduler_active",
        "jetserve_webhook_deliveries_total",
        "jetserve_http_requests_total",
    } <= used


def _dashboard() -> dict[str, Any]:
    return dict(json.loads((MONITORING / "grafana-dashboard.json").read_text()))


def test_dashboard_queries_parse_and_use_real_metrics() -> None:
    dash = _dashboard()
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    used: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            # Grafana's variables, as Grafana substitutes them before querying.
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$model", ".*")
            names = _selectors(expr)
            assert names <= KNOWN, f"{panel['title']}: unknown metrics {names - KNOWN}"
            used |= names
    # Queue depth, queue time, TTFT, inter-token, e2e, tokens, engine state, errors.
    for name in (
        "jetserve_queue_pending",
        "jetserve_queue_ack_pending",
        "jetserve_worker_queue_time_seconds_bucket",
        "jetserve_worker_time_to_first_token_seconds_bucket",
        "jetserve_worker_inter_token_latency_seconds_bucket",
        "jetserve_worker_e2e_request_latency_seconds_bucket",
        "jetserve_worker_prompt_tokens_total",
        "jetserve_worker_generation_tokens_total",
        "jetserve_worker_num_requests_running",
        "jetserve_worker_num_requests_waiting",
        "jetserve_worker_kv_cache_usage_ratio",
        "jetserve_worker_errors_total",
        "jetserve_routed_requests_total",
    ):
        assert name in used, name
    variable = next(v for v in dash["templating"]["list"] if v["name"] == "model")
    assert _selectors(variable["definition"].removeprefix("label_values(").split(",")[0]) <= KNOWN


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_monitors_select_real_pods_and_ports(overlay: str) -> None:
    monitors = {
        d["metadata"]["name"]: d for d in load_all((MONITORING / "podmonitors.yaml").read_text())
    }
    service_monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    rendered = render_file(REPO / "jetserve" / "models.toml", RenderOptions(OVERLAYS[overlay]))
    workers = [d for docs in rendered.values() for d in docs if d["kind"] == "Deployment"]
    static = [
        d
        for name in ("bridge.yaml", "scheduler.yaml")
        for d in load_all((K8S / "base" / name).read_text())
    ]

    def pod_ports(deployment: dict[str, Any]) -> set[str]:
        containers = deployment["spec"]["template"]["spec"]["containers"]
        return {p["name"] for c in containers for p in c.get("ports", [])}

    def selects(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        return all(pod_labels.get(k) == v for k, v in selector.items())

    for monitor, deployments in (
        (monitors["jetserve-workers"], workers),
        (
            monitors["jetserve-scheduler"],
            [
                d
                for d in static
                if d["kind"] == "Deployment" and d["metadata"]["name"] == "jetserve-scheduler"
            ],
        ),
    ):
        selector = monitor["spec"]["selector"]["matchLabels"]
        port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
        assert deployments
        for deployment in deployments:
            assert selects(selector, deployment)
            assert port in pod_ports(deployment)
    service = next(d for d in static if d["kind"] == "Service")
    labels = service["metadata"]["labels"]
    assert all(
        labels.get(k) == v for k, v in service_monitor["spec"]["selector"]["matchLabels"].items()
    )
    assert service_monitor["spec"]["endpoints"][0]["port"] in {
        p["name"] for p in service["spec"]["ports"]
    }


def _absent_selectors(expr: str) -> set[str]:
    """Metric names (with `job` where given) inside absent() / absent_over_time()."""
    found: set[str] = set()

    def inner(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            job = next((m.value for m in node.matchers.matchers if m.name == "job"), None)
            found.add(f"{node.name}{{job={job}}}" if job else str(node.name))

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.Call) and node.func.name in {
            "absent",
            "absent_over_time",
        }:
            for arg in node.args:
                promql_parser.walk(arg, inner)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def test_alerts_fire_when_their_source_is_not_scraped() -> None:
    """A rule over series nobody scrapes is silent: each scraped source the alerts read has
    an alert for its absence. Workers scale to zero; their absence with a backlog is
    JetserveNoWorkers, which reads the NATS exporter."""
    rules = _rules()
    absent = {a for rule in rules for a in _absent_selectors(rule["expr"])}
    scheduler = set(_names(SchedulerMetrics))
    read = {name for rule in rules for name in _selectors(rule["expr"])}
    assert read & scheduler, "the scheduler's alerts"
    assert absent & scheduler  # e.g. absent(jetserve_scheduler_active)
    assert read & NATS_EXPORTER
    assert absent & NATS_EXPORTER
    assert read & set(_names(BridgeMetrics))
    assert "up{job=jetserve-bridge}" in absent  # the ServiceMonitor's job: the Service name
    no_scheduler = next(r for r in rules if r["alert"] == "JetserveNoActiveScheduler")
    assert "jetserve_scheduler_active" in _absent_selectors(no_scheduler["expr"])


def _names(metrics_class: Any) -> list[str]:
    registry = metrics_class(CollectorRegistry()).registry
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    return [family.name + suffix for family in registry.collect() for suffix in suffixes]


def test_monitoring_objects_carry_the_release_label() -> None:
    """kube-prometheus-stack selects monitors and rules by `release`: set once in
    k8s/monitoring/kustomization.yaml, on every object; the NATS chart's PodMonitor too."""
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    release = next(
        entry["pairs"]["release"]
        for entry in kustomization["labels"]
        if "release" in entry["pairs"]
    )
    assert release
    built = kustomize(MONITORING)
    if built is not None:
        monitoring = [d for d in built if d["apiVersion"].startswith("monitoring.coreos.com/")]
        assert {d["kind"] for d in monitoring} == {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
        for doc in monitoring:
            assert doc["metadata"]["labels"]["release"] == release, doc["metadata"]["name"]
    values = yaml.safe_load((K8S / "nats" / "values-prod.yaml").read_text())
    pod_monitor = values["promExporter"]["podMonitor"]
    assert pod_monitor["enabled"]
    assert pod_monitor["merge"]["metadata"]["labels"]["release"] == release

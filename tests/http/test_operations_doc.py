"""docs/operations.md lists exactly the metrics the code exposes, with their type, labels and
service, and its alert rules and examples name only metrics that exist."""

from __future__ import annotations

import re
from pathlib import Path

from broker_agent.http.metrics import AgentMetrics, ServiceMetrics, StationMetrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ROW = re.compile(r"^\| `(broker_agent_\w+)` \|\s*(\w+)\s*\|([^|]*)\|\s*(\w+)\s*\|", re.M)

Exposed = dict[str, tuple[str, frozenset[str]]]


def exposed(metrics: ServiceMetrics) -> Exposed:
    """Name as scraped (counters end in ``_total``) -> (type, label names)."""
    found: Exposed = {}
    for family in metrics.registry.collect():
        if not family.name.startswith("broker_agent_"):
            continue  # process_* from the client library
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = {label for s in family.samples for label in s.labels} - {"le"}
        found[name] = (family.type, frozenset(labels))
    return found


def documented() -> dict[str, tuple[str, frozenset[str], str]]:
    rows = ROW.findall(DOC.read_text(encoding="utf-8"))
    return {
        name: (kind, frozenset(re.findall(r"`(\w+)`", labels)), service)
        for name, kind, labels, service in rows
    }


def test_the_metrics_table_matches_the_registries() -> None:
    agent = exposed(AgentMetrics(fleet=lambda: {}))
    station = exposed(StationMetrics())
    expected = {
        name: (*agent.get(name, station.get(name, ("?", frozenset()))), service)
        for name in agent | station
        for service in [
            "both" if name in agent and name in station else "agent" if name in agent else "station"
        ]
    }
    assert expected == documented()


def test_every_metric_the_doc_mentions_exists() -> None:
    names = set(exposed(AgentMetrics(fleet=lambda: {}))) | set(exposed(StationMetrics()))
    mentioned = set(re.findall(r"\bbroker_agent_\w+", DOC.read_text(encoding="utf-8")))
    histogram_series = {n for n in mentioned if re.sub(r"_(bucket|sum|count)$", "", n) in names}
    assert set() == mentioned - names - histogram_series

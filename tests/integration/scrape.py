"""Reading a worker's /metrics in tests: every sample, by name and label."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def scrape(port: int) -> Samples:
    """Every sample of the worker's /metrics: (name, sorted labels) -> value."""
    text = scrape_text(port)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n == name:
            key = dict(labels)[label]
            found[key] = found.get(key, 0.0) + v
    return found


def wait_counted(port: int, ops: int, timeout: float = 30) -> float:
    """Wait (at most `timeout` s) until `ops` ops are counted, and return how many are: a
    child counts a batch just after settling it, so the last counts may trail the drain."""
    deadline = time.monotonic() + timeout
    while True:
        counted = total(scrape(port), "agentstore_ops_applied_total")
        if counted >= ops or time.monotonic() > deadline:
            return counted
        time.sleep(0.05)

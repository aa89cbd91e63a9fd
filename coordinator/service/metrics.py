"""Prometheus metrics of the coordinator (served on --metrics-port)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


@dataclass
class Metrics:
    registry: CollectorRegistry
    rpc_latency: Histogram
    rpc_errors: Counter
    leases: Counter
    lease_misses: Counter
    heartbeats: Counter
    heartbeat_writes: Counter
    reports: Counter
    refusals: Counter
    registrations: Counter
    merges: Counter
    reverts: Counter
    queue_depth: Gauge
    in_flight: Gauge
    volunteers_online: Gauge
    undecided_results: Gauge


def _build() -> Metrics:
    registry = CollectorRegistry()
    return Metrics(
        registry=registry,
        rpc_latency=Histogram(
            "autoswarm_rpc_seconds", "RPC handling time", ["method"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        ),
        rpc_errors=Counter("autoswarm_rpc_errors_total", "RPCs refused, by status", ["method", "code"], registry=registry),
        leases=Counter("autoswarm_leases_total", "work units leased", ["kind"], registry=registry),
        lease_misses=Counter("autoswarm_lease_misses_total", "lease requests with nothing to do", registry=registry),
        heartbeats=Counter("autoswarm_heartbeats_total", "heartbeats received", registry=registry),
        heartbeat_writes=Counter(
            "autoswarm_heartbeat_writes_total",
            "heartbeats that rewrote their lease's deadline in the store (the rest were answered from memory)",
            registry=registry,
        ),
        reports=Counter("autoswarm_reports_total", "results reported", ["status", "duplicate"], registry=registry),
        refusals=Counter("autoswarm_refusals_total", "work units refused by volunteers", registry=registry),
        registrations=Counter("autoswarm_registrations_total", "volunteers registered", registry=registry),
        merges=Counter("autoswarm_merges_total", "wins merged into the global branch", registry=registry),
        reverts=Counter("autoswarm_reverts_total", "merges reverted", registry=registry),
        queue_depth=Gauge("autoswarm_queue_depth", "queued work units", registry=registry),
        in_flight=Gauge("autoswarm_units_in_flight", "active leases", registry=registry),
        volunteers_online=Gauge("autoswarm_volunteers_online", "volunteers seen recently", registry=registry),
        undecided_results=Gauge(
            "autoswarm_undecided_results", "results reported but not yet judged by the decider", registry=registry
        ),
    )


METRICS = _build()


def serve_metrics(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr, registry=METRICS.registry)

"""Prometheus collectors, in a registry of the app's own (no process-wide state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "coze_bridge_requests",
            "Requests by route and final status",
            ["route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "coze_bridge_request_duration_seconds",
            "Time to the end of the response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "coze_bridge_time_to_first_token_seconds",
            "Time from the request to the first content",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.open_streams = Gauge("coze_bridge_open_streams", "Streams being served", registry=self.registry)
        self.gateway_state = Gauge(
            "coze_bridge_gateway_state", "1 for the bridge's current state", ["state"], registry=self.registry
        )
        self.tokens = Gauge(
            "coze_bridge_user_tokens", "User tokens by state", ["state"], registry=self.registry
        )
        self.queue_length = Gauge(
            "coze_bridge_queue_length", "Requests waiting for a free user token", registry=self.registry
        )
        self.token_in_flight = Gauge(
            "coze_bridge_token_in_flight",
            "Prompts awaiting Coze, by user token label",
            ["token"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "coze_bridge_upstream_errors",
            "Failures of Discord or Coze, by kind",
            ["kind"],
            registry=self.registry,
        )

"""Prometheus metrics of one server (own registry, so several servers can live in one process, e.g. in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("envserver_sessions_active", "Sessions currently open", registry=r)
        self.draining = Gauge("envserver_draining", "1 while the server drains (refuses new resets)", registry=r)
        self.sessions_created = Counter("envserver_sessions_created", "Sessions started", ["warm"], registry=r)
        self.sessions_ended = Counter("envserver_sessions_ended", "Sessions ended, by how", ["reason"], registry=r)
        self.steps = Counter("envserver_steps", "Tool calls executed", ["tool", "status"], registry=r)
        self.step_latency = Histogram(
            "envserver_step_latency_seconds",
            "Server-side latency of one step",
            ["tool"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reset_latency = Histogram(
            "envserver_reset_latency_seconds",
            "Server-side latency of a reset",
            ["warm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.grades = Counter("envserver_grades", "Grading outcomes", ["outcome"], registry=r)
        self.grade_cache_hits = Counter(
            "envserver_grade_cache_hits",
            "Grades answered from the grade cache (identical patch of the same task)",
            registry=r,
        )
        self.grade_latency = Histogram(
            "envserver_grade_latency_seconds", "Grading wall time", buckets=LATENCY_BUCKETS, registry=r
        )
        self.infra_failures = Counter(
            "envserver_infra_failures", "Infrastructure failures, by reason", ["reason"], registry=r
        )
        self.pool_ready = Gauge("envserver_warm_pool_ready", "Warm containers ready", ["image"], registry=r)
        self.request_errors = Counter(
            "envserver_request_errors", "Requests answered with an error", ["type"], registry=r
        )
        self.runtime_frames_rejected = Counter(
            "envserver_runtime_frames_rejected",
            "Lines on a runtime's response stream that were not true responses "
            "(forged or corrupted from inside the sandbox), by why",
            ["why"],
            registry=r,
        )
        self.idempotent_replays = Counter(
            "envserver_idempotent_replays",
            "Resets and steps answered from an earlier request with the same Idempotency-Key (a client's retry)",
            registry=r,
        )

    def runtime_frames_rejected_by(self, why: str) -> None:
        self.runtime_frames_rejected.labels(why=why).inc()

    def infra(self, reason: str) -> None:
        self.infra_failures.labels(reason=reason.split(":", 1)[0]).inc()

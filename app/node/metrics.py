"""Prometheus metrics of the node (prometheus-client, one registry per node)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.node.state.journal import Journal

DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class _JournalGauges(Collector):
    """Queue depth and other counts read from the journal at scrape time (true after restarts)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.journal.counts()
        for name, key, text in (
            ("segmamba_queue_depth", "jobs_ready", "jobs waiting for the worker"),
            ("segmamba_jobs_processing", "jobs_processing", "jobs being processed"),
            ("segmamba_jobs_failed", "jobs_failed", "jobs kept as permanently failed"),
            ("segmamba_studies_receiving", "studies_receiving", "studies still receiving instances"),
            ("segmamba_outbox_pending", "outbox_pending", "results waiting to be acknowledged by a destination"),
            ("segmamba_outbox_committing", "outbox_committing",
             "results stored at a destination, waiting for its storage commitment report"),
        ):
            yield GaugeMetricFamily(name, text, value=counts.get(key, 0))


class NodeMetrics:
    """Counters and histograms updated by the node's parts."""

    def __init__(self, journal: Journal) -> None:
        self.registry = CollectorRegistry()
        self.instances = Counter("segmamba_instances_received", "DICOM instances received, by result",
                                 ["result"], registry=self.registry)
        self.refusals = Counter("segmamba_instances_refused", "instances refused, by C-STORE status (0xA700: disk)",
                                ["status"], registry=self.registry)
        self.jobs = Counter("segmamba_jobs_finished", "job attempts finished, by outcome", ["outcome"],
                            registry=self.registry)
        self.failures = Counter("segmamba_job_failures", "failed job attempts, by reason (error type)",
                                ["reason"], registry=self.registry)
        self.stage_seconds = Histogram("segmamba_job_stage_seconds", "job duration per pipeline stage",
                                       ["stage"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.job_seconds = Histogram("segmamba_job_seconds", "job duration, all stages", buckets=DURATION_BUCKETS,
                                     registry=self.registry)
        self.sends = Counter("segmamba_sends",
                             "result sends, by destination and result (sent, stored, committed, retry)",
                             ["destination", "result"], registry=self.registry)
        self.registry.register(_JournalGauges(journal))

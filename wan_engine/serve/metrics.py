"""Prometheus metrics of one server, in a registry of its own (no process-wide global state):
queue depth, jobs by status, step latency, generation time, GPU memory and the process's memory."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

from ..engine import STATUSES

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
GENERATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
CANCEL_STEP_BUCKETS = (0, 1, 2, 5, 10)


def _gpu_memory_bytes() -> float:
    import torch

    return float(torch.cuda.memory_allocated()) if torch.cuda.is_available() else 0.0


class ServerMetrics:
    def __init__(self, queue_depth, count_by_status):
        self.registry = CollectorRegistry()
        self._count_by_status = count_by_status
        Gauge("wan_queue_depth", "Jobs waiting in the queue", registry=self.registry).set_function(queue_depth)
        self.jobs = Gauge("wan_jobs", "Stored jobs by status", ["status"], registry=self.registry)
        self.finished = Counter("wan_jobs_finished", "Jobs finished by this process, by final status", ["status"],
                                registry=self.registry)
        self.step_seconds = Histogram("wan_step_seconds", "Wall time of one denoising step",
                                      buckets=STEP_BUCKETS, registry=self.registry)
        self.generation_seconds = Histogram("wan_generation_seconds", "Wall time of a completed generation "
                                            "(text encoding to decoded frames)", buckets=GENERATION_BUCKETS,
                                            registry=self.registry)
        self.cancel_steps = Histogram("wan_cancel_steps", "Denoising steps a running job finished after its "
                                      "cancellation was asked for (the one in flight: at most 1)",
                                      buckets=CANCEL_STEP_BUCKETS, registry=self.registry)
        Gauge("wan_gpu_memory_allocated_bytes", "GPU memory held by tensors (0 without a GPU)",
              registry=self.registry).set_function(_gpu_memory_bytes)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends

    def render(self) -> bytes:
        counts = self._count_by_status()
        for status in STATUSES:
            self.jobs.labels(status=status).set(counts.get(status, 0))
        return generate_latest(self.registry)

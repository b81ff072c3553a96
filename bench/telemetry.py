"""Background sampling while a suite runs: NVML on a GPU, resident memory on the CPU.

`GpuTelemetry` polls NVML (the `pynvml` module of nvidia-ml-py) from a daemon thread: memory in
use, power, SM and memory clocks, GPU utilization and temperature. Without pynvml, a driver or a
CUDA device it records nothing and says why in `note`; it never raises into the benchmark.
`RssSampler` polls this process's resident set size from /proc, the CPU stand-in for peak memory.

Both are context managers:

    with GpuTelemetry(device) as telemetry:
        run_suite()
    summary = telemetry.summary()   # TelemetrySummary, JSON-ready via .to_dict()
"""
from __future__ import annotations

import importlib
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

DEFAULT_INTERVAL_S = 0.05
MIB = 1024 ** 2


@dataclass
class TelemetrySummary:
    """What was seen during one sampled region; None where nothing could be read."""

    available: bool
    note: str = ""
    source: str = ""
    samples: int = 0
    peak_memory_mib: float | None = None
    max_power_w: float | None = None
    mean_power_w: float | None = None
    max_sm_clock_mhz: float | None = None
    max_mem_clock_mhz: float | None = None
    mean_util_pct: float | None = None
    max_util_pct: float | None = None
    max_temp_c: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Series:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float | None) -> None:
        if value is not None:
            self.values.setdefault(name, []).append(float(value))

    def max(self, name: str) -> float | None:
        return max(self.values[name]) if self.values.get(name) else None

    def mean(self, name: str) -> float | None:
        v = self.values.get(name)
        return sum(v) / len(v) if v else None


class _Sampler:
    """A daemon thread calling `_sample()` every `interval_s` between __enter__ and __exit__."""

    def __init__(self, interval_s: float):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self.series = _Series()
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while True:
            self._safe_sample()
            if self._stop.wait(self.interval_s):
                break

    def _safe_sample(self) -> None:
        try:
            self._sample()
            self.samples += 1
        except Exception as err:  # noqa: BLE001 - telemetry must never break a benchmark
            self._on_error(err)

    def _on_error(self, err: Exception) -> None:
        pass

    def _start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)
        self._thread.start()

    def _finish(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._safe_sample()  # one last reading at the very end of the region


class GpuTelemetry(_Sampler):
    """NVML readings of the GPU behind `device` while the context is open.

    nvml: the pynvml module (or an object with the same functions); None imports pynvml.
    Passing it explicitly lets tests drive the sampler without a GPU.
    """

    def __init__(self, device: torch.device | str, interval_s: float = DEFAULT_INTERVAL_S, nvml: Any = None):
        super().__init__(interval_s)
        self.device = torch.device(device)
        self._nvml = nvml
        self._handle = None
        self._initialized = False
        self.note = ""

    # -- setup ---------------------------------------------------------------------------------
    def _open(self) -> None:
        if self.device.type != "cuda":
            self.note = f"NVML telemetry skipped: device is {self.device.type}, not cuda"
            return
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError:
                self.note = "NVML telemetry unavailable: pynvml (pip install nvidia-ml-py) is not installed"
                return
        try:
            self._nvml.nvmlInit()
            self._initialized = True
            self._handle = self._device_handle()
        except Exception as err:  # noqa: BLE001 - NVMLError subclasses, a missing driver library
            self.note = f"NVML telemetry unavailable: {type(err).__name__}: {err}"
            self._handle = None

    def _device_handle(self):
        index = self.device.index
        if index is None:
            index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        # CUDA and NVML may number the GPUs differently (CUDA_VISIBLE_DEVICES, PCI order); the
        # UUID names the same card in both, so it is tried first.
        try:
            return self._nvml.nvmlDeviceGetHandleByUUID(f"GPU-{torch.cuda.get_device_properties(index).uuid}")
        except Exception:  # noqa: BLE001 - no CUDA runtime here, or an NVML without that lookup
            return self._nvml.nvmlDeviceGetHandleByIndex(index)

    # -- sampling ------------------------------------------------------------------------------
    def _read(self, name: str, *args):
        try:
            return getattr(self._nvml, name)(self._handle, *args)
        except Exception:  # noqa: BLE001 - a counter this card does not support
            return None

    def _sample(self) -> None:
        n, s = self._nvml, self.series
        memory = self._read("nvmlDeviceGetMemoryInfo")
        s.add("memory_mib", None if memory is None else memory.used / MIB)
        power = self._read("nvmlDeviceGetPowerUsage")  # milliwatts
        s.add("power_w", None if power is None else power / 1e3)
        s.add("sm_clock_mhz", self._read("nvmlDeviceGetClockInfo", getattr(n, "NVML_CLOCK_SM", 1)))
        s.add("mem_clock_mhz", self._read("nvmlDeviceGetClockInfo", getattr(n, "NVML_CLOCK_MEM", 2)))
        util = self._read("nvmlDeviceGetUtilizationRates")
        s.add("util_pct", None if util is None else util.gpu)
        s.add("temp_c", self._read("nvmlDeviceGetTemperature", getattr(n, "NVML_TEMPERATURE_GPU", 0)))

    def _on_error(self, err: Exception) -> None:
        self.note = f"NVML sampling failed: {type(err).__name__}: {err}"

    def __enter__(self) -> "GpuTelemetry":
        self._open()
        if self._handle is not None:
            self._start()
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._finish()
        if self._initialized:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self._initialized = False

    def summary(self) -> TelemetrySummary:
        s = self.series
        if not s.values:
            return TelemetrySummary(available=False, note=self.note or "no NVML samples", source="nvml")
        return TelemetrySummary(
            available=True, note=self.note, source="nvml", samples=self.samples,
            peak_memory_mib=s.max("memory_mib"), max_power_w=s.max("power_w"), mean_power_w=s.mean("power_w"),
            max_sm_clock_mhz=s.max("sm_clock_mhz"), max_mem_clock_mhz=s.max("mem_clock_mhz"),
            mean_util_pct=s.mean("util_pct"), max_util_pct=s.max("util_pct"), max_temp_c=s.max("temp_c"),
        )


class RssSampler(_Sampler):
    """Peak resident set size of this process (MiB) from /proc/self/statm while the context is open.

    `peak_mib - baseline_mib` is the memory a region added on the CPU (the allocator may keep
    freed pages, so it is an upper bound on what the region needed at once).
    """

    STATM = Path("/proc/self/statm")

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S):
        super().__init__(interval_s)
        self.baseline_mib: float | None = None
        self.note = ""

    @classmethod
    def available(cls) -> bool:
        return cls.STATM.exists()

    @classmethod
    def current_mib(cls) -> float:
        resident_pages = int(cls.STATM.read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / MIB

    def _sample(self) -> None:
        self.series.add("rss_mib", self.current_mib())

    def __enter__(self) -> "RssSampler":
        if not self.available():
            self.note = "resident memory unavailable: no /proc/self/statm on this system"
            return self
        self.baseline_mib = self.current_mib()
        self._start()
        return self

    def __exit__(self, *exc) -> None:
        if self.baseline_mib is not None:
            self._finish()

    @property
    def peak_mib(self) -> float | None:
        return self.series.max("rss_mib")

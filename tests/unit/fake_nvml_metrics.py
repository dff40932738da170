"""TEST DOUBLE: a fake NVML with pynvml's metric calls, for the NVML textfile collector.

Only what the NVML textfile collector calls is modelled. A `FakeGpu` holds one GPU's
readings; `FakeNvml([gpu, ...])` behaves like the `pynvml` module over those GPUs.
A reading set to `NOT_SUPPORTED` raises NVMLError(NVML_ERROR_NOT_SUPPORTED), one set to
`FAIL` raises NVMLError(NVML_ERROR_UNKNOWN), as the real library does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

NOT_SUPPORTED = object()
FAIL = object()


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    bus_id: str = "00000000:3B:00.0"
    minor: int = 0
    util_gpu: Any = 37
    util_mem: Any = 12
    temp: Any = 41
    mem_temp: Any = 38
    power_mw: Any = 112345
    energy_mj: Any = 987654321
    sm_clock: Any = 1980
    mem_clock: Any = 2619
    mem_total: int = 81559 * 1024 * 1024
    mem_used: Any = 512 * 1024 * 1024
    mem_reserved: int = 600 * 1024 * 1024
    ecc: dict = field(default_factory=lambda: {(0, 0): 3, (1, 0): 0, (0, 1): 10, (1, 1): 0})
    remapped: Any = (0, 0, 0, 0)
    clocks_event_reasons: Any = 0x1
    pcie_replay: Any = 0
    nvlinks: int = 18
    nvlink_errors: dict = field(default_factory=dict)  # (link, counter) -> value


class FakeNvml:
    """pynvml's surface for the collector, over a list of FakeGpu."""

    NVMLError = NVMLError
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_UNKNOWN = 999
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1
    NVML_NVLINK_ERROR_DL_REPLAY = 0
    NVML_NVLINK_ERROR_DL_RECOVERY = 1
    NVML_NVLINK_ERROR_DL_CRC_FLIT = 2
    NVML_NVLINK_MAX_LINKS = 18
    NVML_FEATURE_ENABLED = 1
    NVML_FI_DEV_MEMORY_TEMP = 82
    nvmlMemory_v2 = 0x2000028

    def __init__(self, gpus: list[FakeGpu], driver: str = "580.95.05", init_error: int | None = None) -> None:
        self.gpus = gpus
        self.driver = driver
        self.init_error = init_error
        self.initialised = False
        self.shutdowns = 0

    # -- helpers
    def _gpu(self, handle: Any) -> FakeGpu:
        if not self.initialised:
            raise NVMLError(1)
        return handle

    @staticmethod
    def _value(value: Any) -> Any:
        if value is NOT_SUPPORTED:
            raise NVMLError(FakeNvml.NVML_ERROR_NOT_SUPPORTED)
        if value is FAIL:
            raise NVMLError(FakeNvml.NVML_ERROR_UNKNOWN)
        return value

    # -- library
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        if not self.initialised:
            raise NVMLError(1)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if not self.initialised or index >= len(self.gpus):
            raise NVMLError(2)
        return self.gpus[index]

    # -- device
    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:
        return self._gpu(h).uuid

    def nvmlDeviceGetName(self, h: FakeGpu) -> str:
        return self._gpu(h).name

    def nvmlDeviceGetPciInfo(self, h: FakeGpu) -> SimpleNamespace:
        return SimpleNamespace(busId=self._gpu(h).bus_id.encode())

    def nvmlDeviceGetMinorNumber(self, h: FakeGpu) -> int:
        return self._gpu(h).minor

    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> SimpleNamespace:
        g = self._gpu(h)
        return SimpleNamespace(gpu=self._value(g.util_gpu), memory=self._value(g.util_mem))

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._value(self._gpu(h).temp)

    def nvmlDeviceGetFieldValues(self, h: FakeGpu, field_ids: list[int]) -> list[SimpleNamespace]:
        g = self._gpu(h)
        out = []
        for fid in field_ids:
            if fid == self.NVML_FI_DEV_MEMORY_TEMP and g.mem_temp not in (NOT_SUPPORTED, FAIL):
                out.append(SimpleNamespace(nvmlReturn=0, valueType=1, value=SimpleNamespace(uiVal=g.mem_temp)))
            else:
                out.append(SimpleNamespace(nvmlReturn=self.NVML_ERROR_NOT_SUPPORTED, valueType=1, value=None))
        return out

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        return self._value(self._gpu(h).power_mw)

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeGpu) -> int:
        return self._value(self._gpu(h).energy_mj)

    def nvmlDeviceGetClockInfo(self, h: FakeGpu, clock: int) -> int:
        g = self._gpu(h)
        return self._value(g.sm_clock if clock == self.NVML_CLOCK_SM else g.mem_clock)

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu, version: int | None = None) -> SimpleNamespace:
        g = self._gpu(h)
        used = self._value(g.mem_used)
        if version == self.nvmlMemory_v2:
            free = g.mem_total - used - g.mem_reserved
            return SimpleNamespace(total=g.mem_total, reserved=g.mem_reserved, free=free, used=used)
        return SimpleNamespace(total=g.mem_total, free=g.mem_total - used, used=used)

    def nvmlDeviceGetPcieReplayCounter(self, h: FakeGpu) -> int:
        return self._value(self._gpu(h).pcie_replay)

    def nvmlDeviceGetTotalEccErrors(self, h: FakeGpu, error_type: int, counter_type: int) -> int:
        return self._value(self._gpu(h).ecc[(error_type, counter_type)])

    def nvmlDeviceGetRemappedRows(self, h: FakeGpu) -> tuple[int, int, int, int]:
        return self._value(self._gpu(h).remapped)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeGpu) -> int:
        return self._value(self._gpu(h).clocks_event_reasons)

    def nvmlDeviceGetNvLinkState(self, h: FakeGpu, link: int) -> int:
        g = self._gpu(h)
        if link >= g.nvlinks:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED if g.nvlinks == 0 else 2)
        return self.NVML_FEATURE_ENABLED

    def nvmlDeviceGetNvLinkErrorCounter(self, h: FakeGpu, link: int, counter: int) -> int:
        return self._gpu(h).nvlink_errors.get((link, counter), 0)

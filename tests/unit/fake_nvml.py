"""A fake NVML binding (TEST DOUBLE for pynvml): the calls the GPU checks make, on GPUs
described by plain data, so the checks run without a GPU."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
_MESSAGES = {
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
}


class NVMLError(Exception):
    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    bus_id: str = "00000000:18:00.0"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    persistence: int = 1
    ecc: tuple[int, int] | None = (1, 1)
    ecc_volatile_uncorrected: int = 0
    ecc_aggregate_uncorrected: int = 0
    remapped_rows: tuple[int, int, int, int] | None = (0, 0, 0, 0)
    pcie: tuple[int, int, int, int] | None = (16, 16, 5, 5)  # width, max width, gen, max gen
    temperature: int = 34
    power_mw: int = 71_000
    power_limit_mw: int = 700_000
    mig: tuple[int, int] | None = (0, 0)
    nvlinks: list[int] = field(default_factory=lambda: [1] * 18)
    # (link, counter) -> count since the driver loaded; a counter missing from the dict reads 0.
    nvlink_errors: dict[tuple[int, int], int] = field(default_factory=dict)
    # The error counters are not supported (as on GPUs that publish them only as field values).
    nvlink_counters: bool = True


class FakeNvml:
    NVMLError = NVMLError
    NVML_ERROR_INVALID_ARGUMENT = NVML_ERROR_INVALID_ARGUMENT
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_FEATURE_DISABLED = 0
    NVML_FEATURE_ENABLED = 1
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1
    NVML_TEMPERATURE_GPU = 0
    NVML_DEVICE_MIG_ENABLE = 1
    NVML_NVLINK_MAX_LINKS = 36
    NVML_NVLINK_ERROR_DL_REPLAY = 0
    NVML_NVLINK_ERROR_DL_RECOVERY = 1
    NVML_NVLINK_ERROR_DL_CRC_FLIT = 2
    NVML_NVLINK_ERROR_DL_CRC_DATA = 3

    def __init__(self, gpus: list[FakeGpu], driver: str = "580.95.05", init_error: int | None = None):
        self.gpus = gpus
        self.driver = driver
        self.init_error = init_error
        self.initialised = False
        self.calls = 0

    # session
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def _gpu(self, handle: int) -> FakeGpu:
        assert self.initialised, "NVML call outside nvmlInit/nvmlShutdown"
        self.calls += 1
        return self.gpus[handle]

    @staticmethod
    def _supported(value):
        if value is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return value

    # system and devices
    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetName(self, h: int) -> str:
        return self._gpu(h).name

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self._gpu(h).uuid

    def nvmlDeviceGetPciInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(busId=self._gpu(h).bus_id.encode(), pciDeviceId=0x233010DE)

    def nvmlDeviceGetPersistenceMode(self, h: int) -> int:
        return self._gpu(h).persistence

    def nvmlDeviceGetEccMode(self, h: int) -> list[int]:
        return list(self._supported(self._gpu(h).ecc))

    def nvmlDeviceGetTotalEccErrors(self, h: int, error_type: int, counter: int) -> int:
        gpu = self._gpu(h)
        assert error_type == self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        return gpu.ecc_volatile_uncorrected if counter == self.NVML_VOLATILE_ECC else gpu.ecc_aggregate_uncorrected

    def nvmlDeviceGetRemappedRows(self, h: int) -> tuple[int, int, int, int]:
        return self._supported(self._gpu(h).remapped_rows)

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: int) -> int:
        return self._supported(self._gpu(h).pcie)[0]

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: int) -> int:
        return self._supported(self._gpu(h).pcie)[1]

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: int) -> int:
        return self._supported(self._gpu(h).pcie)[2]

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: int) -> int:
        return self._supported(self._gpu(h).pcie)[3]

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return self._gpu(h).temperature

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return self._gpu(h).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return self._gpu(h).power_limit_mw

    def nvmlDeviceGetMigMode(self, h: int) -> list[int]:
        return list(self._supported(self._gpu(h).mig))

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        links = self._gpu(h).nvlinks
        if link >= len(links):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED if not links else NVML_ERROR_INVALID_ARGUMENT)
        return links[link]

    def nvmlDeviceGetNvLinkErrorCounter(self, h: int, link: int, counter: int) -> int:
        gpu = self._gpu(h)
        if not gpu.nvlink_counters or link >= len(gpu.nvlinks):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        assert 0 <= counter <= self.NVML_NVLINK_ERROR_DL_CRC_DATA, counter
        return gpu.nvlink_errors.get((link, counter), 0)


def hgx(n: int = 8, **overrides) -> FakeNvml:
    """A healthy HGX H100 node with n GPUs."""
    buses = ["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"]
    gpus = [
        FakeGpu(bus_id=f"00000000:{buses[i]}:00.0", uuid=f"GPU-{i:08d}-0000-0000-0000-000000000000") for i in range(n)
    ]
    return FakeNvml(gpus, **overrides)

"""A CPU platform for verl 0.9.1, registered through verl's platform registry (``verl/plugin/platform``).

Selected by ``VERL_PLATFORM=cpu``: device ``cpu``, Ray resource ``CPU``, communication backend gloo, and a device
module (``torch.cpu`` plus the memory API verl's workers call, which ``torch.cpu`` lacks).
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Any, Optional

import psutil
import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry


def _zero(*args, **kwargs) -> int:
    return 0


def _none(*args, **kwargs) -> None:
    return None


def _mem_get_info(*args, **kwargs) -> tuple[int, int]:
    mem = psutil.virtual_memory()
    return mem.available, mem.total


def _device_module() -> types.ModuleType:
    """``torch.cpu`` with the calls verl makes on ``torch.cuda``: caches and memory fractions are no-ops, memory
    counters are 0, ``mem_get_info`` is the host's, the RNG state is torch's global one."""
    shim = types.ModuleType("cropi_verl.verl_cpu.device")
    extra = {"empty_cache": _none, "ipc_collect": _none, "set_per_process_memory_fraction": _none,
             "memory_allocated": _zero, "memory_reserved": _zero, "max_memory_allocated": _zero,
             "max_memory_reserved": _zero, "reset_peak_memory_stats": _none, "mem_get_info": _mem_get_info,
             "get_rng_state": torch.get_rng_state, "set_rng_state": torch.set_rng_state,
             "manual_seed": torch.manual_seed, "manual_seed_all": torch.manual_seed,
             "set_device": _none, "get_device_name": lambda *a: "cpu"}
    shim.__dict__.update(extra)
    shim.__getattr__ = lambda name: getattr(torch.cpu, name)  # PEP 562: the rest is torch.cpu's
    return shim


DEVICE_MODULE = _device_module()


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """verl on the host CPU (tests, laptops): one Ray ``CPU`` per rank, gloo collectives, no IPC."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def current_device(self) -> str:
        return "cpu"  # verl builds torch devices from it (fsdp_utils: model.to(get_device_id())); 0 would mean CUDA

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CROPI_VISIBLE_CPUS"  # nothing to hide: every rank sees the host

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_cpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None

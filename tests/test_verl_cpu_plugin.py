"""cropi_verl.verl_cpu changes verl only when the CPU platform is selected, and only verl 0.9.1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import cropi_verl.verl_cpu, verl.workers.rollout.replica as replica
from verl.workers.engine.base import EngineRegistry
from verl.single_controller.ray.base import ResourcePoolManager
from verl.utils.distributed import initialize_global_process_group_ray as init_pg
print("cpu" in EngineRegistry._engines["language_model"]["fsdp2"], "hf" in replica.RolloutReplicaRegistry._registry,
      ResourcePoolManager._check_resource_available.__module__, init_pg.__defaults__)
"""


@pytest.mark.parametrize("platform, expected", [
    ("", "False False verl.single_controller.ray.base (None, None)"),  # the GPU path: nothing changed
    ("cpu", "True True cropi_verl.verl_cpu.patches (None, 'cpu:gloo')"),
])
def test_verl_is_patched_only_when_the_cpu_platform_is_selected(platform, expected):
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"} | ({"VERL_PLATFORM": platform} if platform else {})
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == expected


def test_another_verl_version_is_refused(monkeypatch):
    import verl

    from cropi_verl.verl_cpu import patches

    monkeypatch.setattr(verl, "__version__", "0.9.2")
    with pytest.raises(RuntimeError, match="patches verl 0.9.1; this is verl 0.9.2"):
        patches.apply()

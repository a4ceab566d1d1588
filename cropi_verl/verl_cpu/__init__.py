"""verl 0.9.1 on the CPU: a platform, three patches and an HF ``generate`` rollout replica.

verl imports the modules named in ``VERL_USE_EXTERNAL_MODULES`` in every process it starts (``verl/__init__.py``):
the driver, the task runner and every Ray worker. With ``VERL_USE_EXTERNAL_MODULES=cropi_verl.verl_cpu`` and
``VERL_PLATFORM=cpu`` this package registers the ``cpu`` platform (``platform.py``), patches the places where verl
hard-codes an accelerator (``patches.py``) and registers the ``hf`` rollout (``hf_rollout.py``). Without
``VERL_PLATFORM=cpu`` it does nothing, so the GPU path is unchanged.
"""

from __future__ import annotations

import os

CPU_SELECTED = os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"

if CPU_SELECTED:
    from cropi_verl.verl_cpu import patches, platform  # noqa: F401  (platform: registers PlatformCPU)
    from cropi_verl.verl_cpu.hf_rollout import register_hf_rollout

    patches.apply()
    register_hf_rollout()

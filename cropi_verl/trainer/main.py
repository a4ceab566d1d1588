"""Hydra entry point of the verl recipe: ``python -m cropi_verl.trainer.main [overrides]`` (configs/cropi_trainer.yaml).

Resolves ``actor_rollout_ref.model.path`` when it names a preset (its fetched folder: ``models.presets``), validates
verl's config, the ``cropi:`` group and its rollouts files (``read_rollouts``; one clear error before any GPU work) and the verl internals the trainer relies on (``verl_contract.check_verl``), makes
``trainer.default_local_dir`` absolute (every node's workers read the boundary weights there), then runs
``CROPITaskRunner`` through verl's ``run_ppo`` (Ray init, runtime env). ``CROPI_DRY_RUN=1`` prints the composed
config and exits after the checks. A refused override, bad input, Ctrl-C or SIGTERM end it with one line
(``cropi_verl.utils.cli``); an interruption's line names the latest checkpoint a rerun resumes from.
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import ray
from omegaconf import DictConfig, OmegaConf

from cropi_verl.models.presets import preset_folder
from cropi_verl.rollout.records import RolloutLimits, read_rollouts
from cropi_verl.trainer.curriculum_config import check_composed_config, reward_range
from cropi_verl.trainer.verl_contract import check_verl
from cropi_verl.utils.cli import one_line_errors, run_hydra, sigterm_handler_kept_across_ray_init, step
from cropi_verl.utils.run_lock import run_lock


DRY_RUN_HEADER = "# CROPI_DRY_RUN: every check passed; the composed config:"


@ray.remote
class CROPITaskRunner:
    """verl's v1 task flow (TransferQueue, trainer, agent loop manager, fit) with ``CROPITrainer``."""

    def run(self, config: DictConfig) -> None:
        import transfer_queue as tq
        from verl.trainer.main_ppo import TaskRunnerV1
        from verl.utils.logging_utils import configure_verl_logging

        from cropi_verl.trainer.cropi_trainer import CROPITrainer

        configure_verl_logging()
        config.transfer_queue.enable = True
        OmegaConf.resolve(config)
        tq.init(config.transfer_queue)
        helper = TaskRunnerV1.__ray_metadata__.modified_class()  # reuse its agent-loop-manager construction
        succeeded = False
        try:
            helper.config, helper.trainer = config, CROPITrainer(config=config)
            helper.trainer.init()
            helper.init_agent_loop_manager()
            helper.trainer.fit(helper.agent_loop_manager)
            succeeded = True
        finally:
            try:
                if getattr(helper.trainer, "logger", None) is not None:
                    helper.trainer.logger.finish(exit_code=0 if succeeded else 1)
            finally:
                tq.close()


def check(config: DictConfig) -> None:
    """Our ``cropi:`` checks, verl's own config validation (its assertion errors become one-line errors), then the
    rollouts files as the trainer reads them (``read_rollouts``, their values against the policy's vocabulary and
    positions and ``cropi.reward_range``)."""
    from hydra.errors import InstantiationException
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    check_composed_config(config)
    try:
        validate_config(config=config, use_reference_policy=need_reference_policy(config),
                        use_critic=need_critic(config))
    except (AssertionError, InstantiationException) as e:
        raise ValueError(f"verl config: {' '.join(str(e).split())}") from None
    cropi = OmegaConf.to_container(config.cropi, resolve=True)
    limits = RolloutLimits.of_model(config.actor_rollout_ref.model.path, reward_range(cropi))
    for path in [cropi["train_rollouts"], *(cropi.get("val_rollouts") or {}).values()]:
        if path:
            read_rollouts(path, limits=limits)


def check_cpu_platform(config: DictConfig) -> None:
    """``trainer.device=cpu`` (``+device=cpu``) runs verl on the CPU platform of ``cropi_verl.verl_cpu``, which verl
    loads from the environment in every process; without it verl would silently switch the device to cuda."""
    modules = os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",")
    if config.trainer.device == "cpu" and (os.environ.get("VERL_PLATFORM", "").strip().lower() != "cpu"
                                           or "cropi_verl.verl_cpu" not in modules):
        raise ValueError("trainer.device=cpu needs VERL_PLATFORM=cpu and VERL_USE_EXTERNAL_MODULES=cropi_verl.verl_cpu "
                         "in the environment (source recipes/_cpu_env.sh, or run a recipe with DEVICE=cpu)")


def resume_point(config: DictConfig) -> str:
    """Where a rerun of the same command goes on from: verl's latest checkpoint with ``trainer.resume_mode=auto``."""
    tracker = Path(config.trainer.default_local_dir) / "latest_checkpointed_iteration.txt"
    try:
        latest = f"latest checkpoint: {tracker.parent / ('global_step_' + tracker.read_text().strip())}"
    except OSError:
        latest = f"no checkpoint in {tracker.parent} yet"
    if config.trainer.resume_mode == "auto":
        return latest
    start = "over" if config.trainer.resume_mode == "disable" else f"from {config.trainer.resume_from_path}"
    return f"{latest}; with trainer.resume_mode={config.trainer.resume_mode} a rerun starts {start}: set it to auto"


@hydra.main(config_path="../../configs", config_name="cropi_trainer", version_base=None)
@one_line_errors
def main(config: DictConfig) -> None:
    from verl.trainer.main_ppo import run_ppo
    from verl.utils.device import auto_set_device

    step("the config and rollouts checks")
    check_cpu_platform(config)
    config.actor_rollout_ref.model.path = preset_folder(config.actor_rollout_ref.model.path)  # (others: verl's)
    auto_set_device(config)
    check(config)
    check_verl()
    config.trainer.default_local_dir = os.path.abspath(config.trainer.default_local_dir)
    if os.environ.get("CROPI_DRY_RUN"):
        print(DRY_RUN_HEADER)
        print(OmegaConf.to_yaml(config))
        return
    step("verl's training", detail=lambda: resume_point(config))
    with run_lock(config.trainer.default_local_dir, "cropi_verl.trainer.main"), sigterm_handler_kept_across_ray_init():
        run_ppo(config, task_runner_class=CROPITaskRunner)


if __name__ == "__main__":
    run_hydra(main, "cropi_trainer", groups=["cropi"])

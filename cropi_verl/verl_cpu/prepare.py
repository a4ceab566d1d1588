"""The inputs of the verl-on-CPU recipe, built as the tiny demo builds them (``python -m cropi_verl.verl_cpu.prepare
[demo overrides]``, keys of ``configs/tiny_cpu.yaml``): the embedded task's verl parquet files under
``${output_dir}/data``, the warmed-up tiny policy (cached), and beta's offline rollouts under ``${output_dir}/rollouts``
(resumable). Prints the policy's directory as its last line, for ``actor_rollout_ref.model.path``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cropi_verl.local.main import check_before_work, offline_rollouts, prepare
from cropi_verl.utils.cli import one_line_errors, run_hydra


@hydra.main(config_path="../../configs", config_name="tiny_cpu", version_base=None)
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_before_work(cfg, methods=[])
    _, policy_dir = prepare(cfg)
    offline_rollouts(cfg, policy_dir)
    print(policy_dir)


if __name__ == "__main__":
    run_hydra(main, "tiny_cpu")

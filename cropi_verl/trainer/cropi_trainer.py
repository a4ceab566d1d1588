"""``CROPITrainer``: verl 0.9.1's synchronous GRPO trainer (``PPOTrainerSync``) with CROPI stage boundaries.

It overrides hooks, never ``fit()``:

- ``_init_dataloader``: ``trainer.total_training_steps = num_stages * steps_per_stage`` is set *before* verl sizes
  the LR schedule from it, and ``steps_per_epoch`` is set to that total, so verl's epoch counter (computed from
  the full dataset) never ends the run early when each stage trains on a 10% subset;
- ``on_train_begin``: the stage of the next step is selected (stage 0 on a fresh run; on a resume that lands on a
  boundary, the next stage, reusing its ``state.json`` if the selection had finished);
- ``on_step_end`` (after verl's weight sync): at the end of every stage but the last, ``stage_boundary`` scores
  the pool at the current policy and the new stage's dataloader replaces ``self.train_dataloader``
  (``self.train_dataloader_it = None`` makes verl open it on the next step): no restart;
- ``_save_checkpoint``: ``global_step_N/cropi_stage.json`` is written before verl's own save (which writes
  ``latest_checkpointed_iteration.txt`` last); ``_load_checkpoint``: the stage's dataloader is rebuilt from it
  before verl loads ``data.pt`` into it, so the sampler resumes at the same position on the same subset.

The influence workers see the current weights through the checkpoint of the boundary step: the recipes save the
actor with ``hf_model`` in ``checkpoint.save_contents`` and ``trainer.save_freq`` dividing the stage length
(checked at start-up); the workers load ``global_step_N/actor/huggingface`` (see the README's memory plan).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf, open_dict
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path
from verl.utils.dataset.rl_dataset import collate_fn

from cropi_verl.curriculum.boundary import check_rollout_ids, stage_boundary
from cropi_verl.curriculum.sampler import stage_dataloader
from cropi_verl.curriculum.state import StageState
from cropi_verl.trainer.curriculum_config import check_cropi_config

log = logging.getLogger(__name__)
STAGE_FILE = "cropi_stage.json"


def dataset_row_ids(dataset) -> dict[int, int]:
    """prompt id (``extra_info.index``) -> row position in a verl ``RLHFDataset`` (after its own filtering)."""
    return {int(e["index"]): pos for pos, e in enumerate(dataset.dataframe["extra_info"])}


class CROPITrainer(PPOTrainerSync):
    """See the module docstring."""

    stage_state: StageState | None = None

    # ----- set-up ------------------------------------------------------------------------------------------------
    def _init_dataloader(self) -> None:
        cropi = OmegaConf.to_container(self.config.cropi, resolve=True)
        self.schedule = check_cropi_config(cropi, OmegaConf.to_container(self.config.trainer, resolve=True))
        with open_dict(self.config):
            self.config.trainer.total_training_steps = self.schedule.total_steps
        super()._init_dataloader()
        self.steps_per_epoch = self.total_training_steps  # the subset's epochs never end the run (docstring)
        self.id_to_pos = dataset_row_ids(self.train_dataset)
        self.train_rollouts = pd.read_parquet(cropi["train_rollouts"]) if cropi.get("train_rollouts") else None
        names = cropi.get("val_sets") or list(cropi.get("val_rollouts") or {})
        self.val_rollouts = {n: pd.read_parquet(cropi["val_rollouts"][n]) for n in names}
        if self.train_rollouts is not None:
            check_rollout_ids(self.train_rollouts, self.id_to_pos, f"cropi.train_rollouts={cropi['train_rollouts']}")
        self.curriculum_dir = Path(cropi["output_dir"])
        self.influence_group = None

    def _pool(self) -> pd.DataFrame:
        """The selection pool: the offline rollouts, or (strategies without them) every dataset row."""
        if self.train_rollouts is not None:
            return self.train_rollouts
        return pd.DataFrame({"prompt_id": list(self.id_to_pos), "pass_rate": float("nan")})

    # ----- stages ------------------------------------------------------------------------------------------------
    def _install_stage(self, state: StageState) -> None:
        """Replace the trainer's dataloader by the stage's (same dataset, ``RankedSubsetSampler`` over its rows)."""
        data = self.config.data
        self.train_dataloader = stage_dataloader(
            self.train_dataset, state.stage, state.selected_ids, state.sampler_seed, self.id_to_pos,
            data.get("gen_batch_size") or data.train_batch_size, collate_fn, data["dataloader_num_workers"],
            batch_key="data.gen_batch_size / data.train_batch_size",
        )
        self.train_dataloader_it = None
        self.stage_state = state

    def _featurizer(self):
        """The influence worker group at the weights of the checkpoint just saved (``global_step_N``)."""
        from cropi_verl.workers.group import InfluenceWorkerGroup

        cropi = self.config.cropi
        folder = Path(self.config.trainer.default_local_dir) / f"global_step_{self.global_steps}"
        if not (folder / "actor" / "huggingface" / "config.json").is_file():
            self._save_checkpoint()
        workers = cropi.workers
        if self.influence_group is None:
            n = workers.n or self.config.trainer.nnodes * self.config.trainer.n_gpus_per_node
            pool = self.resource_pool_manager.get_resource_pool(self._actor_role()) if workers.use_gpu else None
            self.influence_group = InfluenceWorkerGroup(n, use_gpu=workers.use_gpu, threads=workers.threads,
                                                        resource_pool=pool)
        self.influence_group.init_model(str(folder / "actor" / "huggingface"), OmegaConf.to_container(cropi.projection),
                                        OmegaConf.to_container(cropi.popi), self.tokenizer.pad_token_id)
        return self.influence_group

    def _actor_role(self):
        from verl.trainer.ppo.utils import Role

        for role in (Role.Actor, Role.ActorRolloutRef, Role.ActorRollout):
            if role in self.role_worker_mapping:
                return role
        raise ValueError("no actor role in the trainer's role_worker_mapping")

    def _run_boundary(self, stage: int, step: int) -> None:
        cropi = self.config.cropi
        manifest = {"model": self.config.actor_rollout_ref.model.path,
                    "projection": OmegaConf.to_container(cropi.projection), "popi": OmegaConf.to_container(cropi.popi)}
        state = stage_boundary(
            stage, step, self.schedule, self._pool(), self.val_rollouts, self.curriculum_dir, self._featurizer, manifest,
            self.stage_state, cropi.seed, cropi.metric, cropi.max_val_prompts, cropi.shard_size, progress=True,
        )
        self._install_stage(state)

    def _ensure_stage(self) -> None:
        """The stage of the next step (``global_steps``, 1-based) must be the installed one."""
        done = self.global_steps - 1
        stage = self.schedule.stage_of(done)
        if self.stage_state is None or self.stage_state.stage != stage:
            self._run_boundary(stage, stage * self.schedule.steps_per_stage)

    def on_train_begin(self) -> None:
        super().on_train_begin()
        self._ensure_stage()

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.influence_group is not None:
            self.influence_group.close()

    def on_step_end(self) -> None:
        super().on_step_end()  # verl: sync the new weights to the rollout replicas
        if self.global_steps < self.total_training_steps and self.schedule.is_boundary(self.global_steps):
            self._run_boundary(self.schedule.stage_of(self.global_steps), self.global_steps)

    # ----- checkpoints -------------------------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        folder = Path(self.config.trainer.default_local_dir) / f"global_step_{self.global_steps}"
        if self.stage_state is not None:
            self.stage_state.save(folder / STAGE_FILE)
        super()._save_checkpoint()

    def _resume_folder(self) -> str | None:
        """The checkpoint folder verl's ``_load_checkpoint`` will load (same rules: resume_mode auto / resume_path)."""
        trainer = self.config.trainer
        if trainer.resume_mode == "auto":
            return find_latest_ckpt_path(os.path.abspath(trainer.default_local_dir))
        if trainer.resume_mode == "resume_path":
            return os.path.abspath(trainer.resume_from_path)
        return None

    def _load_checkpoint(self) -> None:
        folder = self._resume_folder()
        if folder is not None and (Path(folder) / STAGE_FILE).is_file():
            self._install_stage(StageState.load(Path(folder) / STAGE_FILE))
            log.info("resuming stage %d (%d prompts) from %s", self.stage_state.stage,
                     len(self.stage_state.selected_ids), folder)
        super()._load_checkpoint()  # loads data.pt into the stage's dataloader: same sampler position

"""``CROPITrainer``: verl 0.9.1's synchronous GRPO trainer (``PPOTrainerSync``) with CROPI stage boundaries.

It overrides hooks, never ``fit()``. Hook timing in verl 0.9.1 (``trainer_base.py``, ``trainer_sync.py``): ``_setup``
puts the rollout replicas to sleep and loads the checkpoint, ``on_init_end`` wakes them (``update_weights``); in each
step ``on_sample_end`` puts them to sleep, the actor trains, ``_save_checkpoint`` runs when due and ``on_step_end``
wakes them. Every influence pass therefore runs while the replicas are asleep (no vLLM weights or KV cache on the
GPU):

- ``_init_dataloader``: ``trainer.total_training_steps = num_stages * steps_per_stage`` is set *before* verl sizes
  the LR schedule from it, and ``steps_per_epoch`` is set to that total, so verl's epoch counter (computed from
  the full dataset) never ends the run early when each stage trains on a 10% subset;
- ``on_init_end``, before verl wakes the replicas: the stage of the next step is selected (stage 0 on a fresh run,
  at the weights of ``actor_rollout_ref.model.path``; on a resume, the stage of step ``N + 1`` at the weights of
  ``global_step_N``, reusing its ``state.json`` if that selection had finished);
- ``on_step_end``, before verl wakes the replicas: after step N that ends a stage (but the last), ``stage_boundary``
  scores the pool at the weights of ``global_step_N`` (just saved: ``trainer.save_freq`` divides the stage length and
  ``hf_model`` is in the actor's ``save_contents``, both checked at start-up) and the new stage's dataloader
  replaces ``self.train_dataloader`` (``self.train_dataloader_it = None`` makes verl open it on the next step): no
  restart. After each pass the influence workers free their model and the GPU cache; after the last step (verl's
  ``fit()`` returns there without ``on_train_end``) the worker group is closed;
- ``_save_checkpoint``: ``global_step_N/cropi_stage.json`` is written before verl's own save (which writes
  ``latest_checkpointed_iteration.txt`` last); ``_load_checkpoint``: the stage's dataloader is rebuilt from it
  before verl loads ``data.pt`` into it, so the sampler resumes at the same position on the same subset;
- ``_consume_sync_metrics``: each boundary's ``timing_s/cropi_*`` seconds and ``cropi/*`` counts join the metrics
  verl logs for that step (stage 0's join step 1's). A boundary after step N is inside step N's ``timing_s/step``;
  stage 0's (in ``on_init_end``) is outside every step.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf, open_dict
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path
from verl.utils.dataset.rl_dataset import collate_fn

from cropi_verl.curriculum.boundary import check_rollout_ids, stage_boundary
from cropi_verl.curriculum.metrics import boundary_metrics
from cropi_verl.curriculum.sampler import stage_dataloader
from cropi_verl.curriculum.state import StageState
from cropi_verl.rollout.records import read_rollouts
from cropi_verl.trainer.curriculum_config import check_composed_config
from cropi_verl.utils.faults import kill_point
from cropi_verl.utils.trace import trace
from cropi_verl.workers.group import resolve_worker_precision

log = logging.getLogger(__name__)
STAGE_FILE = "cropi_stage.json"


def has_hf_weights(folder: Path) -> bool:
    """An HF model folder with its config and weight files (verl writes ``config.json`` on every save)."""
    return (folder / "config.json").is_file() and any(
        any(folder.glob(pattern)) for pattern in ("*.safetensors", "pytorch_model*.bin"))


def dataset_row_ids(dataset) -> dict[int, int]:
    """prompt id (``extra_info.index``) -> row position in a verl ``RLHFDataset`` (after its own filtering)."""
    return {int(e["index"]): pos for pos, e in enumerate(dataset.dataframe["extra_info"])}


class CROPITrainer(PPOTrainerSync):
    """See the module docstring."""

    stage_state: StageState | None = None

    # ----- set-up ------------------------------------------------------------------------------------------------
    def _init_dataloader(self) -> None:
        cropi = OmegaConf.to_container(self.config.cropi, resolve=True)
        self.schedule = check_composed_config(self.config)
        with open_dict(self.config):
            self.config.trainer.total_training_steps = self.schedule.total_steps
        super()._init_dataloader()
        self.steps_per_epoch = self.total_training_steps  # the subset's epochs never end the run (docstring)
        self.id_to_pos = dataset_row_ids(self.train_dataset)
        read = partial(read_rollouts, eos_id=self.tokenizer.eos_token_id)
        self.train_rollouts = read(cropi["train_rollouts"]) if cropi.get("train_rollouts") else None
        names = cropi.get("val_sets") or list(cropi.get("val_rollouts") or {})
        self.val_rollouts = {n: read(cropi["val_rollouts"][n]) for n in names}
        if self.train_rollouts is not None:
            check_rollout_ids(self.train_rollouts, self.id_to_pos, f"cropi.train_rollouts={cropi['train_rollouts']}")
        self.curriculum_dir = Path(cropi["output_dir"])
        self.influence_group = None
        self._cropi_metrics: dict[str, float] = {}
        workers = self.config.cropi.workers  # (dtype, gradient checkpointing) of the influence workers, auto resolved
        self.worker_precision = resolve_worker_precision(workers.dtype, workers.gradient_checkpointing, workers.use_gpu)

    def _pool(self) -> pd.DataFrame:
        """The selection pool: the offline rollouts, or every dataset row (``full``, and strategies without them)."""
        if self.train_rollouts is not None and self.schedule.strategy != "full":
            return self.train_rollouts
        return pd.DataFrame({"prompt_id": list(self.id_to_pos), "pass_rate": float("nan")})

    # ----- stages ------------------------------------------------------------------------------------------------
    def _install_stage(self, state: StageState) -> None:
        """Replace the trainer's dataloader by the stage's (same dataset, ``RankedSubsetSampler`` over its rows).
        ``full`` keeps verl's own dataloader: full data is plain verl GRPO, whatever the stages."""
        if self.schedule.strategy != "full":
            data = self.config.data
            self.train_dataloader = stage_dataloader(
                self.train_dataset, state.stage, state.selected_ids, state.sampler_seed, self.id_to_pos,
                data.get("gen_batch_size") or data.train_batch_size, collate_fn, data["dataloader_num_workers"],
                batch_key="data.gen_batch_size / data.train_batch_size",
            )
            self.train_dataloader_it = None
        self.stage_state = state

    def _boundary_weights(self, step: int) -> str:
        """The policy after ``step`` steps: ``actor_rollout_ref.model.path`` at step 0, else the ``hf_model`` that
        verl saved at ``global_step_<step>`` (its weight files must be there, not only verl's config.json)."""
        if step == 0:
            return str(self.config.actor_rollout_ref.model.path)
        folder = Path(self.config.trainer.default_local_dir) / f"global_step_{step}" / "actor" / "huggingface"
        if not has_hf_weights(folder):
            raise ValueError(f"{folder}: no model weights (*.safetensors / pytorch_model*.bin) for the stage boundary "
                             f"after step {step}; the actor must save hf_model there (actor_rollout_ref.actor."
                             "checkpoint.save_contents) at every boundary (trainer.save_freq dividing "
                             "cropi.steps_per_stage)")
        return str(folder)

    def _featurizer(self, step: int):
        """The influence worker group at the policy after ``step`` steps (``_boundary_weights``)."""
        from cropi_verl.workers.group import InfluenceWorkerGroup

        cropi = self.config.cropi
        workers = cropi.workers
        if self.influence_group is None:
            n = workers.n or self.config.trainer.nnodes * self.config.trainer.n_gpus_per_node
            pool = self.resource_pool_manager.get_resource_pool(self._actor_role()) if workers.use_gpu else None
            self.influence_group = InfluenceWorkerGroup(n, use_gpu=workers.use_gpu, threads=workers.threads,
                                                        resource_pool=pool)
        trace("influence_pass", phase="begin", step=step)
        dtype, checkpointing = self.worker_precision
        self.influence_group.init_model(self._boundary_weights(step), OmegaConf.to_container(cropi.projection),
                                        OmegaConf.to_container(cropi.popi), self.tokenizer.pad_token_id,
                                        dtype=dtype, gradient_checkpointing=checkpointing)
        return self.influence_group

    def _actor_role(self):
        from verl.trainer.ppo.utils import Role

        for role in (Role.Actor, Role.ActorRolloutRef, Role.ActorRollout):
            if role in self.role_worker_mapping:
                return role
        raise ValueError("no actor role in the trainer's role_worker_mapping")

    def _run_boundary(self, stage: int, step: int) -> None:
        """Select stage ``stage`` at the policy after ``step`` steps, install its dataloader, record its metrics."""
        cropi = self.config.cropi
        manifest = {"model": self.config.actor_rollout_ref.model.path, "dtype": self.worker_precision[0],
                    "projection": OmegaConf.to_container(cropi.projection), "popi": OmegaConf.to_container(cropi.popi)}
        previous = self.stage_state
        try:
            state = stage_boundary(
                stage, step, self.schedule, self._pool(), self.val_rollouts, self.curriculum_dir,
                partial(self._featurizer, step), manifest, previous, cropi.seed, cropi.metric, cropi.max_val_prompts,
                cropi.shard_size, progress=True,
            )
        finally:
            if self.influence_group is not None:
                self.influence_group.release()  # the model and the allocator's cache leave the GPU
                trace("influence_pass", phase="end", step=step)
        self._install_stage(state)
        self._cropi_metrics |= boundary_metrics(state, previous, self.curriculum_dir)

    def _ensure_stage(self) -> None:
        """The stage of the next step (0-based index ``global_steps`` before ``fit()`` counts it) is installed."""
        stage = self.schedule.stage_of(self.global_steps)
        if self.stage_state is None or self.stage_state.stage != stage:
            self._run_boundary(stage, stage * self.schedule.steps_per_stage)

    def _close_influence(self) -> None:
        if self.influence_group is not None:
            self.influence_group.close()
            self.influence_group = None

    def on_init_end(self) -> None:
        self._ensure_stage()  # the replicas are asleep: verl's _setup slept them before loading the checkpoint
        super().on_init_end()  # verl: wake the replicas with the current weights

    def on_train_end(self) -> None:
        super().on_train_end()
        self._close_influence()

    def on_step_end(self) -> None:
        # the replicas sleep from on_sample_end until super().on_step_end() wakes them: the pass runs in between
        if self.global_steps < self.total_training_steps and self.schedule.is_boundary(self.global_steps):
            self._run_boundary(self.schedule.stage_of(self.global_steps), self.global_steps)
        super().on_step_end()  # verl: sync the new weights to the rollout replicas (wakes them)
        if self.global_steps >= self.total_training_steps:
            self._close_influence()  # fit() returns after the last step without calling on_train_end

    def _consume_sync_metrics(self) -> dict:
        metrics, self._cropi_metrics = self._cropi_metrics, {}
        return super()._consume_sync_metrics() | metrics

    # ----- checkpoints -------------------------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        folder = Path(self.config.trainer.default_local_dir) / f"global_step_{self.global_steps}"
        if self.stage_state is not None:
            self.stage_state.save(folder / STAGE_FILE)
        super()._save_checkpoint()
        kill_point("checkpoint_saved")

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

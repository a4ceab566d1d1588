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

Around every pass the FSDP actor's optimizer state, then its parameters and gradients, go to host memory through
verl's worker group (``actor_rollout_wg.to``; the second call empties the allocator's cache), and come back after
(``cropi.workers.offload_actor``). A selection records the checkpoint it was computed from (``source``: the initial
model, or ``global_step_N``'s ``cropi_checkpoint.json`` id, new at every save), so a rerun from another checkpoint
(``resume_mode=disable``, an earlier ``resume_from_path``) starts that stage clean instead of reusing it. After each
save, whole ``global_step_*`` folders beyond ``trainer.max_actor_ckpt_to_keep`` are deleted (verl forgets its list of
saves on a resume, and deletes ``global_step_N/actor`` only). ``_balance_batch`` counts the samples verl's agent loop
dropped because their reward (or generation) raised (``cropi/failed_samples``, a warning on each such step), and
``_validate`` warns when a validation data source got no metric.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import uuid
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
from cropi_verl.curriculum.settings import SelectionConfig, candidates_from
from cropi_verl.curriculum.state import StageState
from cropi_verl.models.special_tokens import token_rule_of
from cropi_verl.rollout.collect import other_model_problem
from cropi_verl.rollout.records import RolloutLimits, read_rollouts
from cropi_verl.trainer.curriculum_config import check_composed_config, reward_range, workers_on_gpu
from cropi_verl.utils.atomic import atomic_write_json
from cropi_verl.utils.faults import kill_point
from cropi_verl.utils.identity import file_digest, model_digest
from cropi_verl.utils.trace import trace
from cropi_verl.trainer.worker_plan import resolve_checkpointing, worker_settings

log = logging.getLogger(__name__)
STAGE_FILE = "cropi_stage.json"
CHECKPOINT_ID_FILE = "cropi_checkpoint.json"  # {"id": a new uuid at every save, "step": N}


def has_hf_weights(folder: Path) -> bool:
    """An HF model folder with its config and weight files (verl writes ``config.json`` on every save)."""
    return (folder / "config.json").is_file() and any(
        any(folder.glob(pattern)) for pattern in ("*.safetensors", "pytorch_model*.bin"))


def checkpoint_steps(root: Path) -> list[int]:
    """The N of every ``global_step_N`` folder under ``root``, ascending."""
    steps = []
    for folder in root.glob("global_step_*"):
        suffix = folder.name.removeprefix("global_step_")
        if folder.is_dir() and suffix.isdigit():
            steps.append(int(suffix))
    return sorted(steps)


def prune_checkpoints(root: Path, keep: int | None, latest: int) -> list[Path]:
    """Delete the ``global_step_N`` folders of ``root`` up to step ``latest`` beyond the newest ``keep`` of them
    (None: keep all) and those verl left without ``actor/`` (it deletes ``global_step_N/actor`` only); never
    ``global_step_<latest>``, nor a later one (left by a run resumed from an earlier checkpoint, it is overwritten when
    this run gets there); returns them."""
    import shutil

    steps = [n for n in checkpoint_steps(root) if n <= latest]
    kept = set(steps[-keep:]) if keep else set(steps)
    doomed = [root / f"global_step_{n}" for n in steps
              if n != latest and (n not in kept or not (root / f"global_step_{n}" / "actor").is_dir())]
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


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
        model = self.config.actor_rollout_ref.model.path
        self.tokens = token_rule_of(model, self.tokenizer)  # pad and stop ids (models.special_tokens)
        rollout_files = [cropi.get("train_rollouts"), *(cropi.get("val_rollouts") or {}).values()]
        foreign = {f: p for f in rollout_files if f and (p := other_model_problem(f, model))}
        if foreign:
            raise ValueError("; ".join(f"{f}: {p}" for f, p in foreign.items()))
        limits = RolloutLimits.of_model(model, reward_range(cropi))
        read = partial(read_rollouts, stop_ids=self.tokens.stop_ids, limits=limits)
        self.train_rollouts = read(cropi["train_rollouts"]) if cropi.get("train_rollouts") else None
        names = cropi.get("val_sets") or list(cropi.get("val_rollouts") or {})
        self.val_rollouts = {n: read(cropi["val_rollouts"][n]) for n in names}
        if self.train_rollouts is not None:
            check_rollout_ids(self.train_rollouts, self.id_to_pos, f"cropi.train_rollouts={cropi['train_rollouts']}")
        self.curriculum_dir = Path(cropi["output_dir"])
        self.influence_group = None
        self._cropi_metrics: dict[str, float] = {}
        self.workers_on_gpu = workers_on_gpu(cropi, OmegaConf.to_container(self.config.trainer, resolve=True))
        checkpointing, why = resolve_checkpointing(self.config, cropi, self.workers_on_gpu)
        log.info("influence workers: gradient checkpointing %s (%s)", "on" if checkpointing else "off", why)
        self.worker_precision = (worker_settings(cropi, self.workers_on_gpu, checkpointing).dtype, checkpointing)
        self.val_sources = sorted({str(s) for s in self.val_dataset.dataframe["data_source"]})
        rollouts = {"train": cropi.get("train_rollouts"), **(cropi.get("val_rollouts") or {})}
        # what the selection reads, by content: the initial weights and tokenizer, and the rollouts
        model = self.config.actor_rollout_ref.model.path
        manifest = {"model": model, "model_digest": model_digest(model), "dtype": self.worker_precision[0],
                    "projection": cropi["projection"], "popi": cropi["popi"],
                    "rollouts": {n: file_digest(p) for n, p in rollouts.items() if p}}
        self.selection = SelectionConfig(self.schedule, manifest, cropi["seed"], cropi["metric"],
                                         cropi["max_val_prompts"], cropi["shard_size"], progress=True,
                                         candidates=candidates_from(cropi["rescore"], cropi["candidates"]))

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

    def _checkpoint_folder(self, step: int) -> Path:
        """``global_step_<step>`` under ``trainer.default_local_dir``, absolute (the workers may run elsewhere)."""
        return Path(os.path.abspath(self.config.trainer.default_local_dir)) / f"global_step_{step}"

    def _weights_source(self, step: int) -> dict:
        """What a selection at the policy after ``step`` steps is computed from: the initial model (step 0), else the
        id that ``_save_checkpoint`` wrote into ``global_step_<step>`` (None: saved without it)."""
        if step == 0:
            return {"step": 0, "model": str(self.config.actor_rollout_ref.model.path)}
        record = self._checkpoint_folder(step) / CHECKPOINT_ID_FILE
        return {"step": step, "checkpoint_id": json.loads(record.read_text())["id"] if record.is_file() else None}

    def _boundary_weights(self, step: int) -> str:
        """The policy after ``step`` steps: ``actor_rollout_ref.model.path`` at step 0, else the ``hf_model`` that
        verl saved at ``global_step_<step>`` (its weight files must be there, not only verl's config.json), as an
        absolute path."""
        if step == 0:
            return str(self.config.actor_rollout_ref.model.path)
        folder = self._checkpoint_folder(step) / "actor" / "huggingface"
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
            pool = self.resource_pool_manager.get_resource_pool(self._actor_role()) if self.workers_on_gpu else None
            self.influence_group = InfluenceWorkerGroup(n, use_gpu=self.workers_on_gpu, threads=workers.threads,
                                                        resource_pool=pool)
        trace("influence_pass", phase="begin", step=step)
        dtype, checkpointing = self.worker_precision
        self.influence_group.init_model(self._boundary_weights(step), OmegaConf.to_container(cropi.projection),
                                        OmegaConf.to_container(cropi.popi), self.tokens.pad_id,
                                        dtype=dtype, gradient_checkpointing=checkpointing)
        return self.influence_group

    def _offload_actor(self, step: int) -> bool:
        """Before a pass: the actor's optimizer state, then its parameters and gradients, to host memory (verl's
        ``to``; the parameters' offload empties the allocator's cache, the optimizer's blocks included). False when
        ``cropi.workers.offload_actor`` is off or FSDP2's offload policy places the parameters itself."""
        fsdp = self.config.actor_rollout_ref.actor.get("fsdp_config", {})
        if not self.config.cropi.workers.offload_actor or fsdp.get("offload_policy"):
            return False
        self.actor_rollout_wg.to("cpu", model=False, optimizer=True, grad=False)
        self.actor_rollout_wg.to("cpu", model=True, optimizer=False, grad=True)
        trace("actor_offload", step=step)
        return True

    def _reload_actor(self, step: int) -> None:
        """After a pass: back to the device what verl keeps there (not what ``param_offload`` /
        ``optimizer_offload`` keep on the host)."""
        fsdp = self.config.actor_rollout_ref.actor.get("fsdp_config", {})
        params, optimizer = not fsdp.get("param_offload", False), not fsdp.get("optimizer_offload", False)
        if params or optimizer:
            self.actor_rollout_wg.to("device", model=params, optimizer=optimizer, grad=params)
        trace("actor_reload", step=step)

    def _actor_role(self):
        from verl.trainer.ppo.utils import Role

        for role in (Role.Actor, Role.ActorRolloutRef, Role.ActorRollout):
            if role in self.role_worker_mapping:
                return role
        raise ValueError("no actor role in the trainer's role_worker_mapping")

    def _run_boundary(self, stage: int, step: int) -> None:
        """Select stage ``stage`` at the policy after ``step`` steps, install its dataloader, record its metrics."""
        previous = self.stage_state
        offloaded = False

        def featurizer():
            nonlocal offloaded
            offloaded = self._offload_actor(step)
            return self._featurizer(step)

        try:
            state = stage_boundary(stage, step, self.selection, self._pool(), self.val_rollouts, self.curriculum_dir,
                                   featurizer, previous, source=self._weights_source(step))
        finally:
            if self.influence_group is not None:
                self.influence_group.release()  # the model and the allocator's cache leave the GPU
                trace("influence_pass", phase="end", step=step)
            if offloaded:
                self._reload_actor(step)
        self._install_stage(state)
        self._cropi_metrics |= boundary_metrics(state, previous, self.curriculum_dir)

    def _ensure_stage(self) -> None:
        """The stage of the next step (0-based index ``global_steps`` before ``fit()`` counts it) is installed."""
        stage = self.schedule.stage_of(self.global_steps)
        if self.stage_state is None or self.stage_state.stage != stage:
            self._run_boundary(stage, stage * self.schedule.steps_per_stage)

    def _close_dataloader(self) -> None:
        """End the train dataloader's worker processes (``data.dataloader_num_workers``) once no step needs them: its
        iterator's finaliser joins them (a ``StatefulDataLoader`` keeps its iterator too, for ``state_dict``). Left
        running, Ray's shutdown kills them before the task runner, whose torch SIGCHLD handler then prints
        "DataLoader worker ... is killed by signal" after a run that succeeded."""
        self.train_dataloader_it = self.train_dataloader = None
        gc.collect()

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
            self._close_dataloader()

    def _consume_sync_metrics(self) -> dict:
        metrics, self._cropi_metrics = self._cropi_metrics, {}
        return super()._consume_sync_metrics() | metrics

    def _balance_batch(self, batch, metrics, **kwargs):
        """Count, before verl pads the step's batch, the samples its agent loop dropped: a session whose reward (or
        generation) raised writes no sample, and its group trains with fewer than ``rollout.n``."""
        expected = self.config.data.train_batch_size // self.parameter_sync_step * self.config.actor_rollout_ref.rollout.n
        failed = expected - len(batch.keys)
        metrics["cropi/failed_samples"] = failed
        if failed:
            log.warning("step %d: verl dropped %d of %d samples: their reward or generation raised (the agent-loop "
                        "workers' log has the tracebacks)", self.global_steps, failed, expected)
        return super()._balance_batch(batch, metrics, **kwargs)

    def _validate(self, *args, **kwargs):
        """verl's validation; a data source of ``data.val_files`` without a ``val-core`` metric (every sample's reward
        raised) is a warning and ``cropi/val_sources_missing``."""
        metrics = super()._validate(*args, **kwargs)
        if metrics:
            missing = [s for s in self.val_sources if not any(k.startswith(f"val-core/{s}/") for k in metrics)]
            metrics["cropi/val_sources_missing"] = len(missing)
            if missing:
                log.warning("validation: no metric for data sources %s: their reward raised on every sample",
                            missing)
        return metrics

    # ----- checkpoints -------------------------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        folder = self._checkpoint_folder(self.global_steps)
        if self.stage_state is not None:
            self.stage_state.save(folder / STAGE_FILE)
        atomic_write_json({"id": uuid.uuid4().hex, "step": self.global_steps}, folder / CHECKPOINT_ID_FILE)
        super()._save_checkpoint()
        kill_point("checkpoint_saved")
        pruned = prune_checkpoints(folder.parent, self.config.trainer.get("max_actor_ckpt_to_keep"), self.global_steps)
        if pruned:
            log.info("deleted %s (trainer.max_actor_ckpt_to_keep=%s)", ", ".join(p.name for p in pruned),
                     self.config.trainer.get("max_actor_ckpt_to_keep"))

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

"""The local backend's curriculum run: GRPO steps on CPU with ``stage_boundary`` at every stage start.

Per global step t (0-based): at a stage boundary the stage's subset is chosen (``stage_boundary``, the same routine
the verl trainer calls) and a ``StatefulDataLoader`` over ``RankedSubsetSampler`` is built; every ``eval_every``
steps (and at the end) the validation sets are evaluated; then one ``grpo_step`` with seed ``seed * 100003 + t``.
Each eval record carries the cumulative ``train_seconds`` (GRPO steps so far) and ``select_seconds`` (the stage
boundaries so far, as recorded in their stage states), and the same in FLOPs, ``train_flops`` (``grpo.step_flops``)
and ``select_flops`` (the passes' ``pass_flops``); evaluation and checkpoints are not counted.

Every ``ckpt_every`` steps ``<out>/ckpt/step_<t>.pt`` holds the model, optimizer, loader (sampler position),
stage state, eval history and the cumulative seconds and FLOPs; ``<out>/ckpt/latest.json`` is written after it, atomically. A
rerun resumes from it and continues exactly: sampling seeds depend only on the step, and the sampler resumes at its
position; the seconds already spent are the checkpoint's, never re-measured.

At each boundary of an influence strategy the policy's weights are kept beside the stage's selection, in
``<out>/curriculum/stage_<s>/weights.pt`` (the model's state dict, written once, atomically), so that
``scripts/drift_check.py`` can check that boundary's selection at the weights it was made at.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl.utils.tracking import Tracking

from cropi_verl.curriculum.boundary import check_rollout_ids, stage_boundary
from cropi_verl.curriculum.sampler import stage_dataloader
from cropi_verl.curriculum.schedule import StageSchedule
from cropi_verl.curriculum.settings import SelectionConfig
from cropi_verl.curriculum.state import StageState, stage_dir
from cropi_verl.data.verl_format import row_ids
from cropi_verl.eval.accuracy import avg_at_k
from cropi_verl.influence.pipeline import Featurizer
from cropi_verl.local.grpo import GRPOConfig, grpo_step
from cropi_verl.utils.atomic import atomic_path, atomic_write_json
from cropi_verl.utils.faults import kill_point

log = logging.getLogger(__name__)
BOUNDARY_WEIGHTS = "weights.pt"  # the policy's state dict at an influence strategy's stage boundary


@dataclass(frozen=True)
class EvalConfig:
    k: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 32
    batch_size: int = 100
    every: int = 5  # evaluate every this many steps (and at step 0 and at the end)
    max_batch_tokens: int = 131072  # positions per generate call at most (avg_at_k): bounds the KV cache


@dataclass
class LocalRun:
    """Everything one curriculum run needs; ``featurizer(model)`` returns a Featurizer at ``model``'s weights."""

    policy_dir: Path
    prompts: pd.DataFrame  # verl-format training prompts; prompt ids = extra_info.index
    train_rollouts: pd.DataFrame
    val_rollouts: Mapping[str, pd.DataFrame]
    val_prompts: Mapping[str, pd.DataFrame]  # evaluated every eval.every steps
    targeted: list[str]
    selection: SelectionConfig  # the schedule, the feature stores' manifest, the seed (also training's) and scoring
    grpo: GRPOConfig
    eval: EvalConfig
    out_dir: Path
    featurizer: Callable[[torch.nn.Module], Featurizer]
    ckpt_every: int = 10
    loggers: tuple[str, ...] = ("console",)
    log_every: int = 10

    @property
    def schedule(self) -> StageSchedule:
        return self.selection.schedule

    @property
    def seed(self) -> int:
        return self.selection.seed


class _Positions(Dataset):
    """Dataset of row positions; the loop looks the rows up in the prompts frame."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate(positions: list[int]) -> list[int]:
    return positions


def stage_loader(run: LocalRun, state: StageState, id_to_pos: Mapping[int, int]) -> StatefulDataLoader:
    """The stage's dataloader: batches of row positions of the selected prompts, shuffled by the sampler seed."""
    return stage_dataloader(_Positions(len(run.prompts)), state.stage, state.selected_ids, state.sampler_seed, id_to_pos,
                            run.grpo.batch_size, _collate, batch_key="grpo.batch_size")


def targeted_mean(accs: Mapping[str, float], names: list[str]) -> float:
    return float(np.mean([accs[n] for n in names]))


class LocalCurriculumTrainer:
    def __init__(self, run: LocalRun) -> None:
        self.run = run
        self.tokenizer = AutoTokenizer.from_pretrained(run.policy_dir)
        self.model = AutoModelForCausalLM.from_pretrained(run.policy_dir, dtype=torch.float32)
        self.ref_model = (AutoModelForCausalLM.from_pretrained(run.policy_dir, dtype=torch.float32).eval()
                          if run.grpo.use_kl_loss else None)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=run.grpo.lr, weight_decay=run.grpo.weight_decay)
        ids = row_ids(run.prompts)
        self.id_to_pos = {i: p for p, i in enumerate(ids)}
        check_rollout_ids(run.train_rollouts, self.id_to_pos, "train rollouts")
        self.step = 0
        self.state: StageState | None = None
        self.loader: StatefulDataLoader | None = None
        self.batches = None
        self.history: list[dict] = []
        self.stage_states: list[dict] = []
        self.seconds = {"train": 0.0, "select": 0.0}  # cumulative: GRPO steps, stage boundaries
        self.flops = {"train": 0.0, "select": 0.0}  # the same, in FLOPs (grpo.step_flops, the passes' pass_flops)
        self.ckpt_dir = run.out_dir / "ckpt"

    # ----- checkpoints -------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        path = self.ckpt_dir / f"step_{self.step:06d}.pt"
        blob = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "loader": self.loader.state_dict(), "stage_state": self.state.to_dict(), "history": self.history,
                "stage_states": self.stage_states, "seconds": self.seconds, "flops": self.flops}
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)
        previous = self._latest()
        atomic_write_json({"step": self.step, "path": path.name}, self.ckpt_dir / "latest.json")
        if previous is not None and previous != path:
            previous.unlink(missing_ok=True)
        return path

    def _latest(self) -> Path | None:
        meta = self.ckpt_dir / "latest.json"
        return self.ckpt_dir / json.loads(meta.read_text())["path"] if meta.is_file() else None

    def load_checkpoint(self) -> bool:
        path = self._latest()
        if path is None:
            return False
        blob = torch.load(path, weights_only=False)
        self.step = blob["step"]
        self.model.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.state = StageState.from_dict(blob["stage_state"])
        self.loader = stage_loader(self.run, self.state, self.id_to_pos)
        self.loader.load_state_dict(blob["loader"])
        self.history, self.stage_states, self.seconds = blob["history"], blob["stage_states"], blob["seconds"]
        self.flops = blob.get("flops", {"train": math.nan, "select": math.nan})  # (not counted before #27)
        log.info("resumed %s at step %d (stage %d)", self.run.out_dir, self.step, self.state.stage)
        return True

    # ----- the loop ----------------------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        ev = self.run.eval
        accs = {name: float(np.mean(avg_at_k(self.model, self.tokenizer, frame, ev.k, ev.temperature, ev.max_new_tokens,
                                             self.run.seed, ev.batch_size, max_batch_tokens=ev.max_batch_tokens)))
                for name, frame in self.run.val_prompts.items()}
        others = [n for n in accs if n not in self.run.targeted]
        rec = {"step": self.step, "val": accs, "targeted": targeted_mean(accs, self.run.targeted),
               "untargeted": targeted_mean(accs, others) if others else float("nan"),
               "train_seconds": round(self.seconds["train"], 3), "select_seconds": round(self.seconds["select"], 3),
               "train_flops": self.flops["train"], "select_flops": self.flops["select"]}
        self.history.append(rec)
        return rec

    def _boundary(self) -> None:
        run = self.run
        stage = run.schedule.stage_of(self.step)
        self.state = stage_boundary(stage, self.step, run.selection, run.train_rollouts, run.val_rollouts,
                                    run.out_dir / "curriculum", lambda: run.featurizer(self.model), self.state)
        weights = stage_dir(run.out_dir / "curriculum", stage) / BOUNDARY_WEIGHTS
        if run.schedule.uses_influence and not weights.is_file():
            with atomic_path(weights) as tmp:
                torch.save(self.model.state_dict(), tmp)
        kill_point("selection_done")
        self.stage_states.append(self.state.to_dict())
        self.loader, self.batches = stage_loader(run, self.state, self.id_to_pos), None

    def _next_batch(self) -> pd.DataFrame:
        if self.batches is None:
            self.batches = iter(self.loader)
        try:
            positions = next(self.batches)
        except StopIteration:  # end of an epoch over the subset: the sampler reshuffles
            self.batches = iter(self.loader)
            positions = next(self.batches)
        return self.run.prompts.iloc[positions]

    def fit(self) -> dict:
        """Train for ``schedule.total_steps`` steps (resuming if a checkpoint exists); returns the result record."""
        run = self.run
        torch.manual_seed(run.seed)
        self.load_checkpoint()
        tracker = Tracking("cropi_verl_local", run.out_dir.name, list(run.loggers))
        if self.step == 0 and not self.history:
            self.evaluate()
        total = run.schedule.total_steps
        while self.step < total:
            if run.schedule.is_boundary(self.step) and (self.state is None or self.state.start_step != self.step):
                self._boundary()
                self.seconds["select"] += self.state.stats["seconds"]  # recorded with the stage: a reused one counts
                self.flops["select"] += self.state.stats.get("pass_flops", 0.0)
            t0 = time.time()
            metrics = grpo_step(self.model, self.tokenizer, self.optimizer, self._next_batch(), run.grpo,
                                run.seed * 100003 + self.step, self.ref_model)
            self.seconds["train"] += time.time() - t0
            self.flops["train"] += metrics["compute/flops"]
            self.step += 1
            if self.step % run.eval.every == 0 or self.step == total:
                rec = self.evaluate()
                metrics |= {f"val/{k}": v for k, v in rec["val"].items()} | {"val/targeted": rec["targeted"]}
            if self.step % run.log_every == 0 or self.step == total:
                tracker.log(metrics | {"curriculum/stage": self.state.stage}, step=self.step)
            if self.step % run.ckpt_every == 0 or self.step == total:
                self.save_checkpoint()
            kill_point("train_step")
        tracker.finish()
        result = {"strategy": run.schedule.strategy, "history": self.history, "stages": self.stage_states,
                  "train_seconds": round(self.seconds["train"], 2), "select_seconds": round(self.seconds["select"], 2),
                  "train_flops": self.flops["train"], "select_flops": self.flops["select"]}
        atomic_write_json(result, run.out_dir / "result.json")
        return result

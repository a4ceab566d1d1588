#!/usr/bin/env python
"""Check a CROPI run before the GPU job starts: config, data, offline rollouts, validation sets, disk.

    python scripts/preflight.py [hydra overrides of configs/cropi_trainer.yaml]   (the recipes run it first)

Reports every problem at once (exit 1), else a summary (exit 0). A ``cropi`` key that configs/cropi_trainer.yaml
does not define (a mistyped ``+key``) or a rollouts file that is not one (``read_rollouts``: the readers' own
validation) stops it first with one line ``error: ...`` (exit 2). The checks:
- the ``cropi:`` config checks (fraction, strategy, files, scoring sets, save_freq vs stage length);
- ``data.train_files`` / ``data.val_files``: verl-format schema; each ``data_source`` scored by the configured reward
  as verl loads it (``reward.custom_reward_function``, else verl's ``default_compute_score``) on its first row's
  ground truth, boxed (a right answer: must score 1) and on a number that is not it (a wrong one: must score 0);
- several nodes (``trainer.nnodes`` > 1): ``trainer.default_local_dir`` absolute, on a filesystem every node shares;
- the policy: a local model path exists; the rollouts were collected from it (their ``manifest.json``); token
  lengths and the batch size >= 1; a stage's selection fills at least one batch (``data.train_batch_size``);
- ``cropi.train_rollouts``: prompt-id coverage of the training file, the offline pass-rate summary, how many
  responses are excluded (empty or a non-finite reward: ``records.usable_responses``, as scoring does) and how
  many prompts scoring will skip as zero-advantage (``is_zero_advantage`` of the usable rewards: all equal, or
  fewer than two usable responses; they can never be selected by influence);
- each ``cropi.val_rollouts`` set: usable (non-zero-advantage) prompts, at least one;
- every rollouts file with a ``manifest.json`` beside it: beta's log-probs recomputed in the workers' resolved
  ``cropi.workers.dtype`` (``collect_rollouts.py --logprob-dtype``), else rho != 1 at beta's weights;
- a disk plan: the actor checkpoints kept (``trainer.max_actor_ckpt_to_keep``; each: parameters from the model's
  config.json x (4 B fp32 FSDP shards + 8 B Adam + the hf_model copy in the model's dtype)), the feature stores
  (per influence pass: scored prompts x k x 4 bytes) and the rollouts on disk, against the free space;
- the per-GPU memory plan (``cropi_verl/plan.py``) of the model and the configured shapes against
  ``cropi.gpu_memory_gb``: a problem when it does not fit.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from cropi_verl.curriculum.settings import candidates_from
from cropi_verl.data.verl_format import read_verl_parquet, row_ids
from cropi_verl.influence.gradients import grad_layers_problem
from cropi_verl.plan import WorkerSettings, format_plan, grad_layers_flop_factor, meta_counts
from cropi_verl.models.presets import ModelFolderError, preset_folder
from cropi_verl.rollout.collect import other_model_problem
from cropi_verl.rollout.records import RolloutLimits, excluded_responses, read_rollouts, zero_advantage
from cropi_verl.trainer.curriculum_config import (CROPI_RULES, check_composed_config, check_cropi_keys,
                                                  reward_range, workers_on_gpu)
from cropi_verl.utils.cli import hydra_error_line, one_line, one_line_errors
from cropi_verl.utils.config_rules import config_problems
from cropi_verl.trainer.worker_plan import config_plan, resolve_checkpointing, worker_settings

ROOT = Path(__file__).resolve().parents[1]
# what the reward check scores (``reward_check``): label -> (the response, with {} the answer; whether it is right)
REWARD_PROBES = {"a right answer boxed": ("The final answer is \\boxed{{{}}}.", True),
                 "a right answer in words": ("So the answer is ${}$.", True),
                 "a wrong answer": ("The final answer is \\boxed{{{}}}.", False)}
WRONG_ANSWERS = ("-987654321", "-987654320")  # preflight's reward check boxes the first that is not the truth
FSDP_BYTES, ADAM_BYTES = 4, 8  # per parameter in an actor checkpoint: fp32 model shards, Adam's two fp32 moments
# The cropi keys the memory plan and the log-prob dtype check read (both are skipped while one breaks its rule)
PLAN_KEYS = ("gpu_memory_gb", "projection.k", "popi.micro_batch_tokens", "popi.logit_chunk_tokens",
             "popi.stream_buffer", "popi.share_prompt", "popi.pack", "workers.use_gpu", "workers.dtype",
             "workers.gradient_checkpointing", "workers.offload_actor")
# What to lower when a plan component does not fit
LOWER = {"actor": "actor_rollout_ref.actor.ppo_max_token_len_per_gpu (or more GPUs: trainer.n_gpus_per_node)",
         "influence worker": "cropi.popi.micro_batch_tokens, cropi.popi.logit_chunk_tokens, cropi.popi.stream_buffer"}


def _files(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def stop_ids(model_path: str) -> tuple[int, ...] | None:
    """The policy's stop ids (``models.special_tokens``), with which scoring finds empty responses; None when its
    tokenizer or config is unreadable."""
    from cropi_verl.models.special_tokens import token_rule_of

    try:
        return token_rule_of(model_path).stop_ids
    except Exception:  # a hub id not downloaded, no tokenizer files: only responses without tokens count as empty
        return None


def logprob_dtype_problems(cropi: dict, worker_dtype: str) -> list[str]:
    """Each rollouts file whose beta log-probs were recomputed in another dtype than the workers' forward
    (``logprob_dtype`` in the collection's manifest.json beside it; float32 before the option existed), so that
    rho != 1 at beta's weights. A file without a manifest (made by hand) is not checked."""
    files = {"cropi.train_rollouts": cropi.get("train_rollouts"),
             **{f"cropi.val_rollouts.{n}": p for n, p in (cropi.get("val_rollouts") or {}).items()}}
    out = []
    for label, path in files.items():
        manifest = Path(path).with_name("manifest.json") if path else None
        if manifest is None or not manifest.is_file():
            continue
        have = json.loads(manifest.read_text()).get("config", {}).get("logprob_dtype", "float32")
        if have != worker_dtype:
            out.append(f"{label}: beta's log-probs were recomputed in {have} ({manifest}) but cropi.workers.dtype "
                       f"resolves to {worker_dtype}, so rho != 1 at beta's weights: collect them again with "
                       f"collect_rollouts.py --logprob-dtype {worker_dtype}, or set cropi.workers.dtype={have}")
    return out


def preflight(cfg) -> tuple[list[str], list[str]]:
    """(problems, summary lines) for a composed cropi_trainer config."""
    problems: list[str] = []
    lines: list[str] = []
    cropi = OmegaConf.to_container(cfg.cropi, resolve=True)
    try:  # a preset's folder, as the trainer reads it
        cfg.actor_rollout_ref.model.path = preset_folder(cfg.actor_rollout_ref.model.path)
    except ModelFolderError as e:
        problems.append(f"actor_rollout_ref.model.path={cfg.actor_rollout_ref.model.path}: {e}")
    try:
        check_composed_config(cfg)
    except ValueError as e:
        problems += str(e).removeprefix("bad CROPI config: ").split("; ")
    worker = None
    if not config_problems(cropi, {key: CROPI_RULES[key] for key in PLAN_KEYS}):
        gpu = workers_on_gpu(cropi, OmegaConf.to_container(cfg.trainer, resolve=True))
        checkpointing, why = resolve_checkpointing(cfg, cropi, gpu)
        worker = worker_settings(cropi, gpu, checkpointing)
        lines.append(f"influence workers: {worker.dtype} on {'GPUs' if gpu else 'the CPU'}, gradient checkpointing "
                     f"{'on' if checkpointing else 'off'} ({why})")
        lines.append(lever_line(cfg, cropi, checkpointing))
    problems += model_problems(cfg, cropi) + length_problems(cfg)
    train_ids: set[int] = set()
    tiers: dict[int, str] = {}  # training row id -> its extra_info.tier, where the rows carry one
    sources: dict[str, tuple[str, dict]] = {}  # data_source -> (file, its first row)
    for key in ("train_files", "val_files"):
        for path in _files(cfg.data[key]):
            try:
                frame = read_verl_parquet(path)
            except (ValueError, OSError) as e:  # missing, unreadable (read_parquet) or bad rows: one problem each
                problems.append(f"data.{key}: {one_line(str(e))}")
                continue
            lines.append(f"data.{key}: {path}: {len(frame)} prompts")
            for row in frame.drop_duplicates("data_source").to_dict("records"):
                sources.setdefault(str(row["data_source"]), (path, row))
            if key == "train_files":
                train_ids |= set(row_ids(frame))
                tiers |= {i: str(e["tier"]) for i, e in zip(row_ids(frame), frame["extra_info"])
                          if isinstance(e, dict) and e.get("tier") is not None}
    reward_lines, reward_issues = reward_check(cfg, sources)
    lines += reward_lines
    problems += reward_issues + node_problems(cfg)
    k = cropi["projection"]["k"]
    scored = 0
    val = {name: path for name, path in (cropi.get("val_rollouts") or {}).items() if Path(path).is_file()}
    eos = stop_ids(cfg.actor_rollout_ref.model.path) if cropi.get("train_rollouts") or val else None
    limits = RolloutLimits.of_model(cfg.actor_rollout_ref.model.path, reward_range(cropi))
    if cropi.get("train_rollouts") and Path(cropi["train_rollouts"]).is_file():
        roll = read_rollouts(cropi["train_rollouts"], eos, limits)
        ids = set(int(i) for i in roll["prompt_id"])
        foreign = ids - train_ids if train_ids else set()
        if foreign:
            problems.append(f"cropi.train_rollouts: {len(foreign)} prompt ids are not in data.train_files "
                            f"(first: {sorted(foreign)[:5]}): rollouts of another dataset?")
        zero = zero_advantage(roll)
        scored = int((~zero).sum())
        p = roll["pass_rate"].to_numpy(float)
        lines.append(f"cropi.train_rollouts: {len(roll)} prompts, covering {len(ids & train_ids)}/{len(train_ids)} "
                     f"of the training file; pass rate mean {np.nanmean(p):.3f}, quartiles "
                     f"{np.round(np.nanpercentile(p, [25, 50, 75]), 3).tolist()}; zero-advantage {int(zero.sum())} "
                     f"({zero.mean():.0%}) -> {scored} can be scored; {excluded_responses(roll)} responses excluded "
                     "(empty or non-finite reward)")
        lines += pass_rate_lines(roll, zero, tiers)
        frac = cropi["fraction"]
        n_select = round(frac * len(roll)) if isinstance(frac, (int, float)) and 0 < frac <= 1 else 0
        try:
            candidates = candidates_from(cropi.get("rescore"), cropi.get("candidates") or {})
        except (TypeError, ValueError):
            candidates = None  # reported by the key rules
        if candidates is not None and cropi["strategy"] in ("cropi", "influence_max") and n_select and scored:
            share = candidates.scored_share(frac, scored / len(roll))
            lines.append(f"cropi.rescore=candidates: the passes after stage 0 compute about {share * scored:.0f} of "
                         f"the {scored} scorable prompts' gradients ({share:.0%})")
        if cropi["strategy"] in ("cropi", "influence_max", "influence_oneshot") and scored < n_select:
            problems.append(f"only {scored} prompts can be scored but cropi.fraction selects {n_select}")
        batch = cfg.data.get("gen_batch_size") or cfg.data.train_batch_size
        if cropi["strategy"] != "full" and 0 < n_select < batch:
            problems.append(f"cropi.fraction={frac} selects {n_select} of the {len(roll)} pool prompts, fewer than "
                            f"one batch (data.train_batch_size={batch}): raise the fraction or lower the batch")
    for name, path in val.items():  # a missing file is reported by the config checks
        roll = read_rollouts(path, eos, limits)
        usable = int((~zero_advantage(roll)).sum())
        lines.append(f"cropi.val_rollouts.{name}: {len(roll)} prompts, {usable} usable; {excluded_responses(roll)} "
                     "responses excluded (empty or non-finite reward)")
        if usable == 0:
            problems.append(f"cropi.val_rollouts.{name}: no prompt has a non-zero advantage (every usable response "
                            "scored the same, or fewer than two are usable): its validation gradient would be zero")
        scored += min(usable, cropi["max_val_prompts"])
    passes = cropi["num_stages"] if cropi.get("rescore", True) and cropi["strategy"] != "influence_oneshot" else 1
    disk_problems, disk_lines = disk_plan(cfg, scored * k * 4, passes)
    if worker is None:
        return problems + disk_problems, lines + disk_lines + ["memory plan: skipped, bad cropi keys (listed below)"]
    memory_problems, memory_lines = memory_plan(cfg, worker)
    return (problems + logprob_dtype_problems(cropi, worker.dtype) + disk_problems + memory_problems,
            lines + disk_lines + memory_lines)


def lever_line(cfg, cropi: dict, checkpointing: bool) -> str:
    """The selection's cost levers as this run sets them (issue 34; docs/results.md sections 17-19): the responses
    per pool prompt and the adaptive first draw (the train rollouts' manifest.json), the last-blocks gradient with its
    FLOP factor (``plan.grad_layers_flop_factor``) and the stages (one influence pass each)."""
    parts = []
    manifest = Path(str(cropi.get("train_rollouts") or "")).with_name("manifest.json")
    if cropi.get("train_rollouts") and manifest.is_file():
        have = json.loads(manifest.read_text())
        adaptive = have.get("adaptive")
        parts.append(f"K = {have.get('config', {}).get('n', '?')} responses per pool prompt, adaptive collection "
                     + (f"first {adaptive['first']}: {adaptive['responses']} of {adaptive['responses_at_n']} responses "
                        f"drawn (collection x{adaptive['responses'] / max(adaptive['responses_at_n'], 1):.2f})"
                        if adaptive else "off") + f" ({manifest})")
    n = (cropi.get("popi") or {}).get("grad_layers")
    model = Path(str(cfg.actor_rollout_ref.model.path)).expanduser()
    if n is None:
        parts.append("cropi.popi.grad_layers=null: the full gradient")
    elif (model / "config.json").is_file() and not grad_layers_problem(
            n, json.loads((model / "config.json").read_text())["num_hidden_layers"]):  # else: listed as a problem
        factor = grad_layers_flop_factor(model, n, checkpointing)
        parts.append(f"cropi.popi.grad_layers={n}: the last {n} blocks' gradient (pass FLOPs x{factor:.3f})")
    else:
        parts.append(f"cropi.popi.grad_layers={n}: the last {n} blocks' gradient")
    parts.append(f"cropi.num_stages={cropi['num_stages']}")
    return "selection levers: " + "; ".join(parts)


def pass_rate_lines(roll, zero, tiers: dict[int, str]) -> list[str]:
    """beta's pass rate and zero-advantage share per data_source (the embedded task's skill families) and, where the
    training rows name one, per tier: a group of prompts beta never or always solves gives GRPO no signal."""
    frame = pd.DataFrame({"source": roll["data_source"].astype(str), "pass_rate": roll["pass_rate"].to_numpy(float),
                          "tier": [tiers.get(int(i)) for i in roll["prompt_id"]], "zero": np.asarray(zero, bool)})
    out = []
    for key, label in (("source", "data_source"), ("tier", "tier")):
        if frame[key].isna().all():
            continue
        stats = frame.groupby(key).agg(p=("pass_rate", "mean"), z=("zero", "mean"), n=("zero", "size"))
        out.append(f"cropi.train_rollouts by {label} (pass rate, zero-advantage share, prompts): " + "; ".join(
            f"{r.Index} {r.p:.2f}, {r.z:.0%}, {r.n}" for r in stats.itertuples()))
    return out


def model_problems(cfg, cropi: dict) -> list[str]:
    """The policy: a local path must be a model directory (a hub id is read where it is downloaded), and the offline
    rollouts must have been collected from it (beta = the initial policy: ``manifest.json`` beside each file)."""
    model = str(cfg.actor_rollout_ref.model.path)
    out = []
    if (Path(model).is_absolute() or model.startswith((".", "~"))) and not (Path(model).expanduser() /
                                                                             "config.json").is_file():
        out.append(f"actor_rollout_ref.model.path={model}: no model directory there (no config.json)")
    grad_layers = (cropi.get("popi") or {}).get("grad_layers")
    config = Path(model).expanduser() / "config.json"
    if isinstance(grad_layers, int) and config.is_file():  # a hub id's: checked by the workers as they load it
        problem = grad_layers_problem(grad_layers, json.loads(config.read_text())["num_hidden_layers"])
        if problem:
            out.append(f"cropi.popi.{problem}")
    files = {"cropi.train_rollouts": cropi.get("train_rollouts"),
             **{f"cropi.val_rollouts.{n}": p for n, p in (cropi.get("val_rollouts") or {}).items()}}
    for label, path in files.items():
        if path and (problem := other_model_problem(path, model)):
            out.append(f"{label}: {problem}")
    return out


def length_problems(cfg) -> list[str]:
    """The token lengths and batch size a run needs at least one of."""
    keys = {"data.max_prompt_length": cfg.data.max_prompt_length, "data.max_response_length":
            cfg.data.max_response_length, "data.train_batch_size": cfg.data.train_batch_size}
    return [f"{key}={value}: expected an integer >= 1" for key, value in keys.items()
            if not isinstance(value, int) or isinstance(value, bool) or value < 1]


def reward_check(cfg, sources: dict[str, tuple[str, dict]]) -> tuple[list[str], list[str]]:
    """(lines, problems): each data source scored by the configured reward (loaded as verl loads it) on its first
    row's ground truth stated three ways (``REWARD_PROBES``): boxed and in words, both right (1 expected), and a wrong
    one boxed (0 expected). A raising reward is a problem that names the source and the file."""
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.utils.reward_score import default_compute_score

    custom = cfg.reward.custom_reward_function
    name = f"{custom.path}:{custom.name}" if custom.get("path") else "verl's default_compute_score"
    try:
        score = get_custom_reward_fn(cfg) or default_compute_score
    except Exception as e:  # noqa: BLE001 - a missing file, module or function: verl would fail at start-up
        return [], [f"reward.custom_reward_function: cannot load {name}: {type(e).__name__}: {one_line(str(e))}"]
    problems = []
    for source, (path, row) in sorted(sources.items()):
        truth = str(row["reward_model"]["ground_truth"])
        wrong = next(w for w in WRONG_ANSWERS if w != truth)
        got = {}
        for label, (text, right) in REWARD_PROBES.items():
            try:
                result = score(data_source=source, solution_str=text.format(truth if right else wrong),
                               ground_truth=truth, extra_info=row.get("extra_info"))
                got[label] = float(result["score"] if isinstance(result, dict) else result)
            except Exception as e:  # noqa: BLE001 - what verl's agent loop would catch and count as a failed group
                problems.append(f"data_source {source!r} ({path}): the reward ({name}) raised {type(e).__name__}: "
                                f"{one_line(str(e))}: set reward.custom_reward_function.path=pkg://cropi_verl.rewards")
                break
        else:
            if off := [f"{label} {got[label]}" for label, (_, right) in REWARD_PROBES.items()
                       if got[label] != float(right)]:
                problems.append(f"data_source {source!r} ({path}): the reward ({name}) scores {', '.join(off)}, "
                                "expected 1.0 for a right answer (boxed or in words) and 0.0 for a wrong one (the "
                                "offline rollouts' scale): set "
                                "reward.custom_reward_function.path=pkg://cropi_verl.rewards")
    lines = [] if problems else [f"reward: {name} scores 1 / 0 on every data source ({', '.join(sorted(sources))}), "
                                 "right answers boxed and in words"]
    return lines, problems


def node_problems(cfg) -> list[str]:
    """Several nodes: each node's influence workers load a boundary's weights from ``trainer.default_local_dir``,
    which rank 0 of the first node writes."""
    folder = str(cfg.trainer.default_local_dir)
    if cfg.trainer.nnodes > 1 and not Path(folder).is_absolute():
        return [f"trainer.default_local_dir={folder}: with trainer.nnodes={cfg.trainer.nnodes} it must be an absolute "
                "path on a filesystem every node mounts at the same path (the influence workers of every node load "
                "global_step_N/actor/huggingface from it)"]
    return []


def model_size(model_path: str) -> tuple[int, torch.dtype]:
    """(parameter count, checkpoint dtype) of a model from its config.json alone (``plan.meta_counts``)."""
    config, params, _ = meta_counts(model_path)
    return params, getattr(torch, config.get("dtype") or "float32")


def checkpoint_bytes(params: int, dtype: torch.dtype) -> int:
    """One actor checkpoint: FSDP model shards (fp32) + Adam's two fp32 moments + ``hf_model`` in ``dtype``
    (``data.pt`` and the CROPI stage file are negligible)."""
    return params * (FSDP_BYTES + ADAM_BYTES + dtype.itemsize)


def checkpoints_kept(cfg) -> int:
    """Actor checkpoints on disk at the end: one per ``save_freq`` steps of the run, at most
    ``trainer.max_actor_ckpt_to_keep`` (null: all)."""
    steps, save_freq = cfg.cropi.num_stages * cfg.cropi.steps_per_stage, cfg.trainer.save_freq
    saves = steps // save_freq if save_freq > 0 else 0
    keep = cfg.trainer.get("max_actor_ckpt_to_keep")
    return saves if keep is None else min(saves, keep)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _free(path: Path) -> tuple[Path, int, int]:
    """(nearest existing ancestor of ``path``, its device, its free bytes)."""
    probe = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    return probe, probe.stat().st_dev, shutil.disk_usage(probe).free


def disk_plan(cfg, store_per_pass: int, passes: int) -> tuple[list[str], list[str]]:
    """(problems, lines): the kept checkpoints and the feature stores against the free space where they go,
    and the rollouts already on disk."""
    model = cfg.actor_rollout_ref.model.path
    try:
        params, dtype = model_size(model)
    except Exception as e:  # a hub id not downloaded, an unknown architecture: the plan goes on without it
        lines = [f"disk plan: cannot read the config of {model} ({type(e).__name__}); checkpoints not counted"]
        ckpt = 0
    else:
        kept, one = checkpoints_kept(cfg), checkpoint_bytes(params, dtype)
        ckpt = kept * one
        lines = [f"disk plan: checkpoints {kept} kept x {_size(one)} = {_size(ckpt)} ({params:,} params x (4 B fp32 "
                 f"shards + 8 B Adam + {dtype.itemsize} B {str(dtype).removeprefix('torch.')} hf_model))"]
    rollouts = sum(Path(p).stat().st_size for p in [cfg.cropi.train_rollouts, *(cfg.cropi.val_rollouts or {}).values()]
                   if p and Path(p).is_file())
    lines.append(f"disk plan: feature stores {_size(store_per_pass)} per influence pass x {passes} passes; "
                 f"rollouts {_size(rollouts)} (on disk)")
    need: dict[int, list] = {}
    for path, size in ((Path(cfg.trainer.default_local_dir), ckpt), (Path(cfg.cropi.output_dir), store_per_pass * passes)):
        probe, dev, free = _free(path)
        need.setdefault(dev, [probe, free, 0])[2] += size
    problems = []
    for probe, free, size in need.values():
        lines.append(f"disk plan: {_size(size)} to write under {probe}, {_size(free)} free")
        if size > free:
            problems.append(f"not enough disk under {probe}: checkpoints and feature stores need {_size(size)}, "
                            f"{_size(free)} free")
    return problems, lines


def memory_plan(cfg, worker: WorkerSettings) -> tuple[list[str], list[str]]:
    """(problems, lines): the per-GPU memory plan of the model at the configured shapes (``format_plan``); a
    problem, naming the keys to lower, when it does not fit ``cropi.gpu_memory_gb``."""
    model = cfg.actor_rollout_ref.model.path
    try:
        p = config_plan(cfg, worker)
    except Exception as e:  # a hub id not downloaded, an unknown architecture: no plan
        return [], [f"memory plan: skipped, cannot read the config of {model} ({type(e).__name__})"]
    ok, reasons = p.fits()
    sizes = p.memory | {"actor": p.training}  # the actor's training peak must fit even when offloaded for the pass
    lower = "; ".join(f"{LOWER[name]} ({name})" for name, size in sizes.items() if size and name in LOWER)
    problems = [] if ok else [f"memory plan: does not fit cropi.gpu_memory_gb={cfg.cropi.gpu_memory_gb}: "
                              f"{'; '.join(reasons)}; lower {lower}"]
    return problems, format_plan(p)


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(__doc__.strip() + "\n\nexample: python scripts/preflight.py cropi.train_rollouts=R/train/rollouts.parquet "
              "\"cropi.val_rollouts={gsm8k_heldout:R/gsm8k_heldout/rollouts.parquet}\" (DRY_RUN=1 bash "
              "recipes/run_cropi_qwen1.5b.sh prints the recipe's full line)")
        return 0
    try:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
            cfg = compose(config_name="cropi_trainer", overrides=argv)
    except HydraException as e:  # a mistyped key or a malformed override: bad input, one line
        raise ValueError(hydra_error_line(e, "cropi_trainer", groups=["cropi"])) from None
    check_cropi_keys(OmegaConf.to_container(cfg.cropi))
    problems, lines = preflight(cfg)
    for line in lines:
        print(line)
    if problems:
        print(f"preflight: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("preflight: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

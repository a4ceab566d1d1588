"""The main job on its embedded default: the tiny CPU CROPI demo (``python -m cropi_verl.local.main [overrides]``).

1. Write the embedded task's parquet files; build (or load from cache) the warmed-up tiny policy (= beta), or take
   the real model ``policy.path`` names (a preset such as ``smollm2-135m``, fetched by ``scripts/fetch_model.py``, or
   a local HF folder; ``preset=smollm2`` sets it with a few-shot prompt, its token budgets and memory bounds).
   With ``estimate``, print an upper bound of the wall time left (``local/wall_estimate.py``).
2. Collect offline rollouts of the pool and of each validation set from it (resumable); each split's collection
   seconds are recorded once in ``<out>/rollouts/collect_seconds.json``.
3. Start the influence worker group (Ray, verl single_controller, CPU).
4. For each method in ``methods`` (CROPI and the baselines): a curriculum GRPO run of ``num_stages *
   steps_per_stage`` steps on the local backend, evaluating the validation sets every ``eval.every`` steps.
   A finished method (``<out>/<method>/result.json``) is skipped on a rerun; an interrupted one resumes; either is
   refused, before any work, if the rerun's settings differ (``cropi_verl/local/run_config.py``), as are beta's
   rollouts whose manifest records other collection settings: one error names every such directory
   (``check_before_work``). Ctrl-C or SIGTERM ends it with one line saying where it stopped (``utils/cli.py``).
   With ``repeats`` > 1 each method also runs with seeds ``seed+1 ..`` (``<out>/<method>.seed<s>/``).
5. Write ``summary.json`` and ``curves.png`` (plus ``selection_<method>.png``) and print the table; with repeats,
   the curves are the mean over seeds and the selection plots show the first seed. Each method's speed-up over
   full data is given in steps, in seconds (``wallclock_speedup``: its GRPO steps and stage boundaries up to the
   step it reaches full data's best, plus the offline collection it selects from, ``collect_charge``) and in FLOPs
   (``compute_speedup``: the same parts counted from the tokens they processed, ``spent_flops``; load cannot skew it).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.curriculum.schedule import INFLUENCE_STRATEGIES, PASS_RATE_STRATEGIES, StageSchedule
from cropi_verl.curriculum.settings import SelectionConfig, candidates_from
from cropi_verl.data.toy_task import TARGETED_SETS, UNTARGETED_SETS, ToyTaskConfig, build_toy_task, in_prompt_format
from cropi_verl.data.verl_format import row_ids, write_verl_parquet
from cropi_verl.eval.plots import plot_run
from cropi_verl.eval.speedup import compute_speedup, gain_speedup, step_speedup, wallclock_speedup
from cropi_verl.influence.gradients import PopiConfig, grad_layers_problem
from cropi_verl.local.config_checks import check_demo_config, dataclass_from
from cropi_verl.local.grpo import GRPOConfig
from cropi_verl.local.run_config import (refuse_other_settings, run_config, run_dir_problem, with_inputs,
                                         write_run_config)
from cropi_verl.local.trainer import EvalConfig, LocalCurriculumTrainer, LocalRun
from cropi_verl.local.wall_estimate import Rates, estimate_lines, longest_per_call, measure_rates
from cropi_verl.models.presets import PRESETS, model_source
from cropi_verl.models.special_tokens import token_rule_of
from cropi_verl.models.tiny_policy import TinyPolicyConfig, build_tiny_policy, tiny_policy_dir
from cropi_verl.rollout.collect import (CollectConfig, adaptive_first_problem, collect_rollouts, hf_backend,
                                        manifest_mismatch)
from cropi_verl.rollout.hf_backend import chat_prompt_ids
from cropi_verl.rollout.records import RolloutLimits, read_rollouts
from cropi_verl.utils.atomic import atomic_write_json
from cropi_verl.utils.cache import cache_root
from cropi_verl.utils.cli import check_writable, one_line_errors, run_hydra, step
from cropi_verl.utils.identity import file_digest
from cropi_verl.utils.run_lock import run_lock
from cropi_verl.workers.group import InfluenceWorkerGroup

log = logging.getLogger("cropi_verl")
VAL_SETS = TARGETED_SETS + UNTARGETED_SETS
COLLECT_SECONDS = "collect_seconds.json"  # under ${output_dir}/rollouts: each split's offline collection seconds


def prepare(cfg: DictConfig) -> tuple[dict, Path]:
    """Write the task's splits under ``${output_dir}/data`` (their prompts in ``policy.prompt``'s format) and build
    the tiny policy, or take ``policy.path``'s model; returns (frames, policy dir)."""
    step("the task's data")
    frames = build_toy_task(dataclass_from(ToyTaskConfig, cfg.task))
    frames = {split: in_prompt_format(frame, cfg.policy.prompt) for split, frame in frames.items()}
    data_dir = Path(cfg.output_dir) / "data"
    for split, frame in frames.items():
        write_verl_parquet(frame, data_dir / f"{split}.parquet")
    if cfg.policy.path:
        policy_dir = policy_dir_of(cfg)
        log.info("policy: %s (policy.path=%s)", policy_dir, cfg.policy.path)
        return frames, policy_dir
    step("the tiny policy's warm-up (unless cached)")
    t0 = time.time()
    policy_dir = build_tiny_policy(*policy_config(cfg))
    log.info("tiny policy: %s (%.1fs)", policy_dir, time.time() - t0)
    return frames, policy_dir


def policy_config(cfg: DictConfig) -> tuple[TinyPolicyConfig, Path | None]:
    """The tiny policy's config and cache directory (None: ``cache_root()/tiny_policy``)."""
    policy = dataclass_from(TinyPolicyConfig, cfg.policy, ("cache_dir", "path"),
                            task=dataclass_from(ToyTaskConfig, cfg.task))
    return policy, Path(cfg.policy.cache_dir) / "tiny_policy" if cfg.policy.cache_dir else None


def policy_dir_of(cfg: DictConfig) -> Path:
    """beta's folder: ``policy.path``'s (a preset name or a local HF folder, checked: ``models.presets``), else where
    the tiny policy of the config is cached (built by ``prepare``)."""
    if not cfg.policy.path:
        return tiny_policy_dir(*policy_config(cfg))
    source = model_source(cfg.policy.path)
    if not Path(source).is_dir():
        raise ValueError(f"policy.path={cfg.policy.path}: expected a preset name ({', '.join(PRESETS)}) or a local HF "
                         "model folder (the demo downloads nothing)")
    return Path(source)


def collect_config(cfg: DictConfig, policy_dir: Path, split: str) -> CollectConfig:
    """beta's offline collection of ``split``: ``offline.n`` responses per pool prompt (adaptive with
    ``offline.adaptive_first``), ``offline.val_n`` else."""
    off = cfg.offline
    return CollectConfig(model=str(policy_dir), input=str(Path(cfg.output_dir) / "data" / f"{split}.parquet"),
                         backend="hf", n=off.n if split == "train" else off.val_n, temperature=off.temperature,
                         max_new_tokens=off.max_new_tokens, seed=cfg.seed, batch_size=off.batch_size,
                         shard_size=off.shard_size, adaptive_first=off.adaptive_first if split == "train" else None)


def demo_seeds(cfg: DictConfig) -> list[int]:
    """Each method's training seeds: ``seed`` .. ``seed + repeats - 1``."""
    return [cfg.seed + r for r in range(cfg.repeats)]


def check_before_work(cfg: DictConfig, methods: list[str]) -> None:
    """Every check that needs no work, before anything is written: the config, the policy cache directory (the
    output_dir is Hydra's: ``WritableRunDir``), and the results a rerun would reuse or resume against this command's
    settings (each method directory of ``methods``, each split's rollouts manifest), all named in one error."""
    check_demo_config(cfg)
    if not cfg.policy.path:
        cache = policy_config(cfg)[1]
        check_writable(cache or cache_root() / "tiny_policy", "the policy cache (policy.cache_dir, else $CROPI_CACHE_DIR)")
    policy_dir = policy_dir_of(cfg)
    layers = (cfg.policy.num_hidden_layers if not cfg.policy.path else
              json.loads((policy_dir / "config.json").read_text())["num_hidden_layers"])
    if problem := grad_layers_problem(cfg.influence.grad_layers, layers):
        raise ValueError(f"bad demo config: influence.{problem}")
    if problem := adaptive_first_problem(cfg.offline.adaptive_first, cfg.offline.n):
        raise ValueError(f"bad demo config: offline.{problem} (offline.n)")
    runs = [run_dir_problem(method_dir(cfg, m, s), run_config(cfg, m, s)) for m in methods for s in demo_seeds(cfg)]
    rollouts = [manifest_mismatch(Path(cfg.output_dir) / "rollouts" / split,
                                  collect_config(cfg, policy_dir, split))
                for split in ("train",) + TARGETED_SETS]
    refuse_other_settings(runs + rollouts)


def offline_rollouts(cfg: DictConfig, policy_dir: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """beta's rollouts: ``offline.n`` per pool prompt, ``offline.val_n`` per *targeted* validation prompt (the
    untargeted sets are held out of scoring, as in the paper); resumable."""
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(policy_dir)
    stop_ids = token_rule_of(policy_dir, tok).stop_ids
    out = {}
    for split in ("train",) + TARGETED_SETS:
        step(f"beta's rollouts of {split}")
        cc = collect_config(cfg, policy_dir, split)
        split_dir = Path(cfg.output_dir) / "rollouts" / split
        path = timed_collect(split_dir.parent / COLLECT_SECONDS, split,
                             lambda: collect_rollouts(cc, split_dir, hf_backend(model, tok, cc), tok))
        out[split] = read_rollouts(path, stop_ids, RolloutLimits.of_model(str(policy_dir)))
    return out.pop("train"), out


def print_estimate(cfg: DictConfig, pool: pd.DataFrame, policy_dir: Path, rates: Rates | None = None,
                   train_roll: pd.DataFrame | None = None) -> Rates:
    """Print the wall-time estimate of what this command has left to do (``local/wall_estimate.py``) with
    ``rates``, measured first when None; with beta's pool rollouts ``train_roll``, from their response lengths."""
    tok = AutoTokenizer.from_pretrained(policy_dir)
    prompts = [chat_prompt_ids(tok, list(p)) for p in pool["prompt"]]
    if rates is None:
        step("the wall-time estimate (three rates measured first)")
        model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
        rates = measure_rates(model, tok, prompts, cfg.grpo.batch_size * cfg.grpo.n, cfg.grpo.micro_batch_tokens)
    collected = {s for s in ("train",) + TARGETED_SETS
                 if (Path(cfg.output_dir) / "rollouts" / s / "rollouts.parquet").is_file()}
    runs = {method_dir(cfg, m, s): m for m in cfg.methods for s in demo_seeds(cfg)}
    longest = None if train_roll is None else longest_per_call(
        [[len(r) for r in rs] for rs in train_roll["response_ids"]], cfg.offline.batch_size)
    print("\n".join(estimate_lines(cfg, prompts, rates, runs, collected, longest)), flush=True)
    return rates


def timed_collect(record: Path, split: str, collect: Callable[[], Path]) -> Path:
    """``collect()``, its seconds written under ``split`` in the json ``record`` the first time only: a rerun keeps
    the recorded seconds (its call only reads the finished shards back)."""
    seconds = json.loads(record.read_text()) if record.is_file() else {}
    t0 = time.time()
    path = collect()
    if split not in seconds:
        atomic_write_json(seconds | {split: round(time.time() - t0, 2)}, record)
    return path


def collect_charge(strategy: str, seconds: Mapping[str, float]) -> float:
    """The offline-collection seconds (or FLOPs) a method waits for: the pool's for pass-rate strategies, the pool's
    and the targeted validation sets' for influence strategies, none for random and full."""
    if strategy in INFLUENCE_STRATEGIES:
        return round(sum(seconds[s] for s in ("train",) + TARGETED_SETS), 2)
    return seconds["train"] if strategy in PASS_RATE_STRATEGIES else 0.0


def elapsed_seconds(history: list[dict], fixed: float) -> list[float]:
    """One run's seconds by each eval: ``fixed`` (its collection charge) + its training and stage boundaries so far."""
    return [round(fixed + r["train_seconds"] + r["select_seconds"], 2) for r in history]


def spent_flops(history: list[dict], fixed: float) -> list[float]:
    """One run's FLOPs by each eval: ``fixed`` (its collection's) + its GRPO steps and influence passes so far (NaN
    for a result written before FLOPs were counted: no compute speed-up then)."""
    return [fixed + r.get("train_flops", math.nan) + r.get("select_flops", math.nan) for r in history]


def collection_flops(rollouts: pd.DataFrame, params: int) -> float:
    """beta's offline collection: 2 P per prompt and response token sampled, and 2 P per token again for the
    log-prob forward that recomputes beta's log-probs (``rollout.hf_backend.behaviour_logprobs``)."""
    tokens = sum(len(p) * len(r) + sum(len(x) for x in r) for p, r in zip(rollouts["prompt_token_ids"],
                                                                         rollouts["response_ids"]))
    return 4.0 * params * tokens


def pool_summary(train_rollouts: pd.DataFrame, prompts: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """beta's offline pass rate on the pool, overall and by skill family / tier, and the per-prompt table."""
    info = pd.DataFrame({"prompt_id": row_ids(prompts), "family": [e["family"] for e in prompts["extra_info"]],
                         "tier": [str(e["tier"]) for e in prompts["extra_info"]]})
    pool = train_rollouts[["prompt_id", "pass_rate"]].merge(info, on="prompt_id")
    p = pool["pass_rate"]
    return {
        "mean": float(p.mean()),
        "by_family": {k: float(v) for k, v in pool.groupby("family")["pass_rate"].mean().items()},
        "by_tier": {k: float(v) for k, v in pool.groupby("tier")["pass_rate"].mean().items()},
        "zero_advantage_fraction": float(((p == 0) | (p == 1)).mean()),
    }, pool


def method_dir(cfg: DictConfig, strategy: str, seed: int) -> Path:
    return Path(cfg.output_dir) / (strategy if seed == cfg.seed else f"{strategy}.seed{seed}")


def run_method(cfg: DictConfig, strategy: str, seed: int, frames: dict, policy_dir: Path, train_roll: pd.DataFrame,
               val_roll: dict, group: InfluenceWorkerGroup, manifest: dict) -> dict:
    out = method_dir(cfg, strategy, seed)
    want = with_inputs(run_config(cfg, strategy, seed), policy_dir, manifest["rollouts"])
    refuse_other_settings([run_dir_problem(out, want)])  # now with the policy's and rollouts' content
    if (out / "result.json").is_file():
        log.info("%s (seed %d): already finished, reusing %s", strategy, seed, out / "result.json")
        return json.loads((out / "result.json").read_text())
    step(f"training {strategy} with seed {seed}")
    write_run_config(out, want)
    cur = cfg.curriculum
    fraction = 1.0 if strategy == "full" else cur.fraction
    schedule = StageSchedule(cur.num_stages, cur.steps_per_stage, fraction, strategy, bool(cur.rescore))
    inf = cfg.influence
    run = LocalRun(
        policy_dir=policy_dir, prompts=frames["train"], train_rollouts=train_roll, val_rollouts=val_roll,
        val_prompts={n: frames[n] for n in VAL_SETS}, targeted=list(TARGETED_SETS),
        selection=SelectionConfig(schedule, manifest, seed, inf.metric, inf.max_val_prompts, inf.shard_size,
                                  candidates=candidates_from(cur.rescore, cur.candidates)),
        grpo=dataclass_from(GRPOConfig, cfg.grpo), out_dir=out,
        eval=dataclass_from(EvalConfig, cfg.eval, ("speedup_gain_fraction",)),
        featurizer=group.update_weights, ckpt_every=cfg.train.ckpt_every,
        loggers=tuple(cfg.train.loggers), log_every=cfg.train.log_every,
    )
    log.info("=== %s (seed %d): %d stages x %d steps, fraction %.2f ===", strategy, seed, cur.num_stages,
             cur.steps_per_stage, fraction)
    return LocalCurriculumTrainer(run).fit()


def targeted_curve(history: list[dict]) -> tuple[list, list]:
    """(eval steps, targeted accuracy) of one run's eval history."""
    return [r["step"] for r in history], [r["targeted"] for r in history]


def mean_over_seeds(runs: list[dict]) -> dict:
    """One method's result with its eval history (accuracies and cumulative seconds) averaged over seeds (same eval
    steps); the stages and the run's total timings are the first seed's."""
    if len(runs) == 1:
        return runs[0]

    def mean(rows: list[dict]) -> dict:
        numbers = [k for k in rows[0] if k not in ("step", "val")]
        return {"step": rows[0]["step"], **{k: float(np.mean([r[k] for r in rows])) for k in numbers},
                "val": {n: float(np.mean([r["val"][n] for r in rows])) for n in rows[0]["val"]}}

    return runs[0] | {"history": [mean(list(rows)) for rows in zip(*(r["history"] for r in runs))]}


def per_seed(runs: dict[str, list[dict]], seeds: list[int], gain_fraction: float) -> dict:
    """Each seed's final/best targeted accuracy per method, CROPI's speed-up over full data (at full data's best
    and at ``gain_fraction`` of its gain) and its final margin over random, seed by seed."""
    out: dict = {"seeds": seeds, "methods": {}}
    for name, rs in runs.items():
        out["methods"][name] = {"final_targeted": [r["history"][-1]["targeted"] for r in rs],
                                "best_targeted": [max(h["targeted"] for h in r["history"]) for r in rs]}
    if "cropi" in runs and "full" in runs:
        pairs = [(targeted_curve(f["history"]), targeted_curve(c["history"])) for f, c in zip(runs["full"], runs["cropi"])]
        steps = [step_speedup(*f, *c) for f, c in pairs]
        out["cropi_speedup"] = [s["speedup"] for s in steps]
        out["cropi_speedup_at_gain"] = [gain_speedup(*f, *c, gain_fraction)["speedup"] for f, c in pairs]
        if undefined := [seed for seed, s in zip(seeds, steps) if "speedup_note" in s]:
            out["speedup_undefined_seeds"] = undefined  # full's best at step 0: both speed-ups are 0/0 (None)
    if "cropi" in runs and "random" in runs:
        out["cropi_minus_random_final"] = [c["history"][-1]["targeted"] - r["history"][-1]["targeted"]
                                           for c, r in zip(runs["cropi"], runs["random"])]
    return out


def family_mix(results: dict[str, dict], pool: pd.DataFrame) -> dict[str, list[dict[str, float]]]:
    """Per method and stage: the share of each skill family among the selected prompts."""
    fam = dict(zip(pool["prompt_id"], pool["family"]))
    return {name: [pd.Series([fam[i] for i in s["selected_ids"]]).value_counts(normalize=True).round(3).to_dict()
                   for s in res["stages"]] for name, res in results.items() if name != "full"}


def summarize(cfg: DictConfig, results: dict[str, dict], collect: Mapping[str, float],
              collect_flops: Mapping[str, float]) -> dict:
    """Final/best accuracies per method, each method's speed-up over full data in steps, in seconds and in FLOPs
    (with ``collect`` / ``collect_flops``, each split's offline collection seconds / FLOPs, charged by
    ``collect_charge``), and the selection cost."""
    table = {}
    for name, res in results.items():
        h = res["history"]
        best = max(h, key=lambda r: r["targeted"])
        table[name] = {"final_targeted": h[-1]["targeted"], "final_untargeted": h[-1]["untargeted"],
                       "best_targeted": best["targeted"], "best_step": best["step"], "final_val": h[-1]["val"]}
    out: dict = {"methods": table}
    if "full" in results:
        full = targeted_curve(results["full"]["history"])
        others = {m: targeted_curve(r["history"]) for m, r in results.items() if m != "full"}
        out["speedup"] = {m: step_speedup(*full, *c) for m, c in others.items()}
        out["speedup_at_gain"] = {m: gain_speedup(*full, *c, cfg.eval.speedup_gain_fraction) for m, c in others.items()}
        charge = {m: collect_charge(m, collect) for m in results}
        out["elapsed_seconds"] = {m: elapsed_seconds(r["history"], charge[m]) for m, r in results.items()}
        out["wallclock_speedup"] = {m: wallclock_speedup(*full, out["elapsed_seconds"]["full"], *c,
                                                         out["elapsed_seconds"][m]) | {"collect_seconds": charge[m]}
                                    for m, c in others.items()}
        flops_charge = {m: collect_charge(m, collect_flops) for m in results}
        out["spent_flops"] = {m: spent_flops(r["history"], flops_charge[m]) for m, r in results.items()}
        out["compute_speedup"] = {m: compute_speedup(*full, out["spent_flops"]["full"], *c, out["spent_flops"][m])
                                  | {"collect_flops": flops_charge[m]} for m, c in others.items()}
    if "cropi" in results and "random" in results:
        c, r = table["cropi"], table["random"]
        out["cropi_vs_random"] = {"final_targeted_delta": c["final_targeted"] - r["final_targeted"],
                                  "beats_random_at_equal_steps": c["final_targeted"] > r["final_targeted"]}
    if "cropi" in results:
        res = results["cropi"]
        per_stage_train = res["train_seconds"] / cfg.curriculum.num_stages
        scored = [s["stats"] for s in res["stages"] if s.get("score_file")]
        passes = [s["seconds"] for s in scored]
        parts = {k: [s["pass_seconds"][k] for s in scored if "pass_seconds" in s] for k in ("val_features", "pool_features")}
        out["selection_cost"] = {"offline_collection_seconds": dict(collect),
                                 "influence_pass_seconds": passes, "train_stage_seconds": round(per_stage_train, 2),
                                 "pass_over_stage": (float(np.mean(passes)) / per_stage_train) if passes else None,
                                 **{f"{k}_seconds": v for k, v in parts.items()},
                                 "pool_features_over_stage": (float(np.mean(parts["pool_features"])) / per_stage_train
                                                              if parts["pool_features"] else None)}
        # the drift meter of each scored stage (influence_pass.drift_summary: ESS/K of beta's responses at theta)
        out["drift"] = [{"stage": s["stage"], "start_step": s["start_step"], **s["stats"]["drift"]}
                        for s in res["stages"] if s.get("score_file") and "drift" in s["stats"]]
    return out


def speedup_text(entry: dict | None) -> str:
    """A speed-up entry as the table shows it: '-' for none or an undefined one (0/0), 'never', or the ratio."""
    if entry is None or "speedup_note" in entry:
        return "-"
    return "never" if entry["speedup"] is None else f"{entry['speedup']:.2f}x"


def seed_texts(values: list, seeds: list[int], undefined: set[int]) -> str:
    """Per-seed values: '-' for a seed whose speed-up is undefined (0/0), 'never' for None, else 3 digits."""
    return ", ".join("-" if s in undefined else "never" if v is None else f"{v:.3g}" for s, v in zip(seeds, values))


def print_table(pool: dict, summary: dict) -> None:
    print(f"\noffline pass rate of beta on the pool: {pool['mean']:.3f} "
          f"({', '.join(f'{k} {v:.2f}' for k, v in pool['by_family'].items())}); "
          f"zero-advantage {pool['zero_advantage_fraction']:.0%}")
    sp, sg, sw, sc = (summary.get(k, {}) for k in ("speedup", "speedup_at_gain", "wallclock_speedup",
                                                   "compute_speedup"))
    gain_col = f"@{next(iter(sg.values()))['fraction']:.0%} gain" if sg else ""
    print(f"\n{'method':<18}{'final tgt':>10}{'best tgt':>10}{'@step':>7}{'final untgt':>13}{'speed-up':>10}{gain_col:>11}"
          f"{'wall-clock':>12}{'compute':>10}")
    for name, row in summary["methods"].items():
        s_txt, g_txt, w_txt, c_txt = (speedup_text(d.get(name)) for d in (sp, sg, sw, sc))
        print(f"{name:<18}{row['final_targeted']:>10.3f}{row['best_targeted']:>10.3f}{row['best_step']:>7}"
              f"{row['final_untargeted']:>13.3f}{s_txt:>10}{g_txt if gain_col else '':>11}{w_txt:>12}{c_txt:>10}")
    for note in sorted({e["speedup_note"] for d in (sp, sg, sw, sc) for e in d.values() if "speedup_note" in e}):
        print(f"  -: {note}")
    if sw:
        print(f"wall-clock: full data's seconds to its best ({next(iter(sw.values()))['baseline_seconds']:.1f}s) over "
              "a method's seconds to reach it, counting its GRPO steps, stage boundaries and, for methods that select "
              "from offline rollouts, their collection")
    if sc:
        print(f"compute: the same in FLOPs ({next(iter(sc.values()))['baseline_flops']:.3g} for full data), from the "
              "tokens each run processed: sampling, the updates' forward and backward, the influence passes and the "
              "offline collection (independent of the machine's load)")
    if "per_seed" in summary:
        ps = summary["per_seed"]
        undefined = set(ps.get("speedup_undefined_seeds", []))
        print(f"(mean over seeds {ps['seeds']})")
        for key, label in [("cropi_speedup", "cropi speed-up over full"),
                           ("cropi_speedup_at_gain", f"cropi speed-up over full {gain_col}"),
                           ("cropi_minus_random_final", "cropi - random, final")]:
            if key in ps:
                print(f"  {label}, seed by seed: "
                      + seed_texts(ps[key], ps["seeds"], undefined if "speedup" in key else set()))
    if "selection_cost" in summary and summary["selection_cost"]["pass_over_stage"] is not None:
        c = summary["selection_cost"]
        print(f"\ninfluence pass: {np.mean(c['influence_pass_seconds']):.1f}s per stage boundary, "
              f"{c['pass_over_stage']:.0%} of a training stage ({c['train_stage_seconds']:.1f}s)")
        if c.get("pool_features_seconds"):
            print(f"  of which pool gradients {np.mean(c['pool_features_seconds']):.1f}s "
                  f"({c['pool_features_over_stage']:.0%} of a stage), validation gradients "
                  f"{np.mean(c['val_features_seconds']):.1f}s")
    if summary.get("drift"):
        print("drift of beta's responses at cropi's weights (ESS/K sequence-level, token-mean; share below 1/4; "
              "largest token ratio): " + "; ".join(
                  f"step {d['start_step']}: {d['ess_seq_mean']:.2f}, {d['ess_popi_mean']:.2f}, "
                  f"{d['ess_low_share']:.0%}, {d['rho_max']:.3g}" for d in summary["drift"]))


@hydra.main(config_path="../../configs", config_name="tiny_cpu", version_base=None)
@one_line_errors
def main(cfg: DictConfig) -> None:
    with run_lock(cfg.output_dir, f"the demo ({cfg.run_name})"):  # one run per output_dir at a time
        run_demo(cfg)


def run_demo(cfg: DictConfig) -> None:
    """The demo (the module docstring's steps)."""
    check_before_work(cfg, cfg.methods)
    seeds = demo_seeds(cfg)
    torch.set_num_threads(cfg.threads)
    warnings.filterwarnings("ignore", message=".*'set_vital' is deprecated")  # torchdata's, once per dataloader
    t0 = time.time()
    frames, policy_dir = prepare(cfg)
    rates = print_estimate(cfg, frames["train"], policy_dir) if cfg.estimate else None
    train_roll, val_roll = offline_rollouts(cfg, policy_dir)
    if rates:
        print_estimate(cfg, frames["train"], policy_dir, rates, train_roll)
    pool, pool_table = pool_summary(train_roll, frames["train"])
    inf = cfg.influence
    step("starting the influence workers")
    group = InfluenceWorkerGroup(inf.workers, use_gpu=False, threads=inf.threads_per_worker)
    popi = PopiConfig(micro_batch_tokens=inf.micro_batch_tokens, clip_ratio=inf.clip_ratio,
                      share_prompt=inf.share_prompt, merge_duplicates=inf.merge_duplicates,
                      grad_layers=inf.grad_layers)
    tok = AutoTokenizer.from_pretrained(policy_dir)
    manifest = group.init_model(str(policy_dir), {"method": inf.method, "k": inf.k, "seed": inf.seed,
                                                  "subset_ratio": inf.subset_ratio, "native": inf.native},
                                asdict(popi), token_rule_of(policy_dir, tok).pad_id)
    rollouts = {split: file_digest(Path(cfg.output_dir) / "rollouts" / split / "rollouts.parquet")
                for split in ("train",) + TARGETED_SETS}
    manifest |= {"policy": str(policy_dir), "rollouts": rollouts}  # selections and features: by content too
    runs = {m: [run_method(cfg, m, s, frames, policy_dir, train_roll, val_roll, group, manifest) for s in seeds]
            for m in cfg.methods}
    group.close()
    step("the summary")
    results = {m: mean_over_seeds(rs) for m, rs in runs.items()}
    out = Path(cfg.output_dir)
    collect = json.loads((out / "rollouts" / COLLECT_SECONDS).read_text())
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(policy_dir).parameters())
    collect_flops = {split: collection_flops(frame, params) for split, frame in {"train": train_roll, **val_roll}.items()}
    summary = summarize(cfg, results, collect, collect_flops) | {"selection_family_mix": family_mix(results, pool_table)}
    if len(seeds) > 1:
        summary["per_seed"] = per_seed(runs, seeds, cfg.eval.speedup_gain_fraction)
    plot_run(out, results, summary, pool_table)
    print_table(pool, summary)
    summary |= {"run_name": cfg.run_name, "policy_dir": str(policy_dir), "pool": pool,
                "curves": {n: r["history"] for n, r in results.items()}, "wall_seconds": round(time.time() - t0, 1),
                "config": OmegaConf.to_container(cfg, resolve=True)}
    print(f"wrote {atomic_write_json(summary, out / 'summary.json')} and {out / 'curves.png'}")


if __name__ == "__main__":
    run_hydra(main, "tiny_cpu")

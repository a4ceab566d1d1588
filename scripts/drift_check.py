#!/usr/bin/env python
"""Check the drift meter against what it stands for: how much an off-policy selection (POPI on beta's offline
rollouts) agrees with an on-policy one at the same weights, against the agreement sampling noise allows.

    python scripts/drift_check.py outputs/tiny_cpu [--method cropi] [--fraction 0.1] [--seeds 1 2]

At the weights of a demo run's method (its latest checkpoint, ``<run>/<method>/ckpt``), it selects the top
``--fraction`` of the pool four times, with the demo's scoring settings (``cropi_verl.curriculum.influence_pass``):

- off-policy: on beta's offline rollouts (``<run>/rollouts``), as CROPI does;
- on-policy, twice: on fresh rollouts of the pool and of the targeted validation sets sampled at those weights with
  two seeds (the demo's ``offline`` sampling settings);
- on-policy with shared validation rollouts: the second seed's pool with the first seed's validation sets.

It prints the overlaps |A & B| of the selections (off/on for each seed; on/on, the noise floor; on/on with shared
validation rollouts) with the drift meter at those weights (``influence_pass.drift_summary``), and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cropi_verl.curriculum.influence_pass import influence_pass
from cropi_verl.curriculum.schedule import StageSchedule
from cropi_verl.curriculum.settings import SelectionConfig
from cropi_verl.data.toy_task import TARGETED_SETS
from cropi_verl.influence.gradients import PopiConfig, parameter_offsets
from cropi_verl.influence.pipeline import local_featurizer
from cropi_verl.influence.projection import make_projector
from cropi_verl.rollout.collect import collect_rollouts, hf_backend
from cropi_verl.rollout.records import read_rollouts
from cropi_verl.utils.cli import HelpFormatter, one_line_errors


def selection(featurize, pool, val, cfg: SelectionConfig, root: Path) -> tuple[set[int], dict]:
    """The top ``cfg.schedule.fraction`` of ``pool`` scored against ``val`` (feature stores under ``root``)."""
    res = influence_pass(featurize, pool, val, root, cfg)
    return set(int(i) for i in res.selection.prompt_ids), res.drift


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("run", type=Path, help="a demo run directory (output_dir)")
    ap.add_argument("--method", default="cropi", help="whose latest checkpoint gives the weights")
    ap.add_argument("--fraction", type=float, default=None, help="default: the run's curriculum.fraction")
    ap.add_argument("--seeds", type=int, nargs=2, default=[1, 2], help="the two on-policy sampling seeds")
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cropi_verl.local.main import collect_config

    summary = json.loads((args.run / "summary.json").read_text())
    cfg = OmegaConf.create(summary["config"])
    latest = args.run / args.method / "ckpt" / "latest.json"
    blob = torch.load(latest.parent / json.loads(latest.read_text())["path"], weights_only=False)
    policy = Path(summary["policy_dir"])
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    model.load_state_dict(blob["model"])
    tok = AutoTokenizer.from_pretrained(policy)
    inf = cfg.influence
    _, dim = parameter_offsets(model)
    popi = PopiConfig(micro_batch_tokens=inf.micro_batch_tokens, share_prompt=inf.share_prompt,
                      merge_duplicates=inf.merge_duplicates)
    projector = make_projector(inf.method, dim, inf.k, inf.seed, inf.subset_ratio)
    featurize = local_featurizer(model, projector, tok.pad_token_id, popi)
    fraction = args.fraction or cfg.curriculum.fraction
    sel_cfg = SelectionConfig(StageSchedule(1, 1, fraction, "cropi"), {}, cfg.seed, inf.metric, inf.max_val_prompts,
                              inf.shard_size)
    splits = ("train",) + TARGETED_SETS
    offline = {s: read_rollouts(args.run / "rollouts" / s / "rollouts.parquet", tok.eos_token_id) for s in splits}
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {}
        for seed in args.seeds:  # on-policy rollouts at these weights, the demo's sampling settings
            for s in splits:
                cc = replace(collect_config(cfg, policy, s), seed=seed)
                out = Path(tmp) / f"roll_{seed}" / s
                path = collect_rollouts(cc, out, hf_backend(model, tok, cc), tok, progress=False)
                fresh[seed, s] = read_rollouts(path, tok.eos_token_id)
        val = lambda seed: {s: fresh[seed, s] for s in TARGETED_SETS}  # noqa: E731
        a, b = args.seeds
        off, drift = selection(featurize, offline["train"], {s: offline[s] for s in TARGETED_SETS}, sel_cfg,
                               Path(tmp) / "off")
        on_a, _ = selection(featurize, fresh[a, "train"], val(a), sel_cfg, Path(tmp) / "on_a")
        on_b, _ = selection(featurize, fresh[b, "train"], val(b), sel_cfg, Path(tmp) / "on_b")
        on_b_shared, _ = selection(featurize, fresh[b, "train"], val(a), sel_cfg, Path(tmp) / "on_b_shared")
    n = len(off)
    out = {"run": str(args.run), "method": args.method, "step": blob["step"], "selected": n,
           "off_on_seed_a": len(off & on_a), "off_on_seed_b": len(off & on_b), "on_on": len(on_a & on_b),
           "on_on_shared_val": len(on_a & on_b_shared), **drift}
    print(f"{args.method} at step {blob['step']}: top {n} of {len(offline['train'])} pool prompts")
    print(f"  off-policy vs on-policy (seed {a}, {b}): {out['off_on_seed_a']}, {out['off_on_seed_b']}")
    print(f"  on-policy vs on-policy (noise floor): {out['on_on']}; with shared validation rollouts: "
          f"{out['on_on_shared_val']}")
    print(f"  drift meter: ESS/K sequence-level {drift['ess_seq_mean']:.2f}, token-mean {drift['ess_popi_mean']:.2f}, "
          f"share below 1/4 {drift['ess_low_share']:.0%}, largest token ratio {drift['rho_max']:.3g}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

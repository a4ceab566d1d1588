#!/usr/bin/env python
"""Check the drift meter against what it stands for: how much an off-policy selection (POPI on beta's offline
rollouts) agrees with an on-policy one at the same weights, against the agreement sampling noise allows.

    python scripts/drift_check.py outputs/tiny_cpu [--method cropi] [--stages all] [--fraction 0.1] [--seeds 1 2]

At the weights of each stage boundary of a demo run's method (``<run>/<method>/curriculum/stage_<s>/weights.pt``,
kept by the demo at every influence boundary; ``--stages latest``: its latest checkpoint), it selects the top
``--fraction`` of the pool four times, with the demo's scoring settings (``cropi_verl.curriculum.influence_pass``):

- off-policy: on beta's offline rollouts (``<run>/rollouts``), as CROPI does;
- on-policy, twice: on fresh rollouts of the pool and of the targeted validation sets sampled at those weights with
  two seeds (the demo's ``offline`` sampling settings);
- on-policy with shared validation rollouts: the second seed's pool with the first seed's validation sets.

At a boundary whose stage ran a full pass (``rescore=true``; stage 0 always), the off-policy selection is the one the
run made there, up to tie-breaks (``off_vs_run``: their overlap), and the drift meter the one its pass recorded; after
a one-shot stage 0 or with ``rescore=candidates`` (a pass over candidates only) they can differ. The selections use the
run's strategy (``cropi`` or ``influence_max``).

It prints, per boundary, the overlaps |A & B| of the selections (off/on for each seed; on/on, the noise floor; on/on
with shared validation rollouts) with the drift meter at those weights (``influence_pass.drift_summary``), and a final
JSON line with every boundary's row.
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
from cropi_verl.curriculum.state import StageState
from cropi_verl.data.toy_task import TARGETED_SETS
from cropi_verl.influence.gradients import PopiConfig, parameter_offsets
from cropi_verl.influence.pipeline import local_featurizer
from cropi_verl.influence.projection import make_projector
from cropi_verl.local.trainer import BOUNDARY_WEIGHTS
from cropi_verl.models.special_tokens import token_rule_of
from cropi_verl.rollout.collect import collect_rollouts, hf_backend
from cropi_verl.rollout.records import read_rollouts
from cropi_verl.utils.cli import HelpFormatter, one_line_errors


def selection(featurize, pool, val, cfg: SelectionConfig, root: Path) -> tuple[set[int], dict]:
    """The top ``cfg.schedule.fraction`` of ``pool`` scored against ``val`` (feature stores under ``root``)."""
    res = influence_pass(featurize, pool, val, root, cfg)
    return set(int(i) for i in res.selection.prompt_ids), res.drift


def stages_arg(text: str) -> str:
    """``--stages``: all, latest, or stage numbers separated by commas."""
    if text in ("all", "latest") or all(part.strip().isdigit() for part in text.split(",")):
        return text
    raise argparse.ArgumentTypeError(f"expected all, latest or stage numbers such as 0,3, got {text!r}")


def weights_to_check(run: Path, method: str, stages: str) -> list[tuple[str, Path, str | None, set[int] | None]]:
    """(label, file, key, the run's selection there) of each weights to check: the boundary weights
    ``stage_<s>/weights.pt`` (a state dict) of every stage (``all``) or of the listed ones (``0,2``), with the stage's
    selection; or the latest checkpoint (``latest``; its ``model``, no selection)."""
    if stages == "latest":
        latest = run / method / "ckpt" / "latest.json"
        if not latest.is_file():
            raise ValueError(f"{latest}: missing; has {method} run in {run}?")
        return [("latest", latest.parent / json.loads(latest.read_text())["path"], "model", None)]
    curriculum = run / method / "curriculum"
    found = {int(p.parent.name.split("_")[1]): p for p in sorted(curriculum.glob(f"stage_*/{BOUNDARY_WEIGHTS}"))}
    wanted = sorted(found) if stages == "all" else [int(x) for x in stages.split(",")]
    missing = [s for s in wanted if s not in found]
    if missing or not wanted:
        raise ValueError(f"{curriculum}: no boundary weights for stages {missing or 'any'} (stage_NNN/"
                         f"{BOUNDARY_WEIGHTS}, kept by runs since they were added; --stages latest checks the latest "
                         "checkpoint)")
    return [(f"stage {s}", found[s], None, set(StageState.load(found[s].with_name("state.json")).selected_ids))
            for s in wanted]


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("run", type=Path, help="a demo run directory (output_dir)")
    ap.add_argument("--method", default="cropi", help="whose weights are checked")
    ap.add_argument("--stages", type=stages_arg, default="all",
                    help="all: every boundary's weights; a list such as 0,3; or latest: the latest checkpoint")
    ap.add_argument("--fraction", type=float, default=None, help="default: the run's curriculum.fraction")
    ap.add_argument("--seeds", type=int, nargs=2, default=[1, 2], help="the two on-policy sampling seeds")
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cropi_verl.local.main import collect_config

    summary = json.loads((args.run / "summary.json").read_text())
    cfg = OmegaConf.create(summary["config"])
    todo = weights_to_check(args.run, args.method, args.stages)
    policy = Path(summary["policy_dir"])
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(policy)
    tokens = token_rule_of(policy, tok)
    inf = cfg.influence
    _, dim = parameter_offsets(model)
    popi = PopiConfig(micro_batch_tokens=inf.micro_batch_tokens, share_prompt=inf.share_prompt,
                      merge_duplicates=inf.merge_duplicates)
    projector = make_projector(inf.method, dim, inf.k, inf.seed, inf.subset_ratio)
    featurize = local_featurizer(model, projector, tokens.pad_id, popi)
    fraction = args.fraction or cfg.curriculum.fraction
    strategy = "influence_max" if args.method == "influence_max" else "cropi"  # the run's ranking
    sel_cfg = SelectionConfig(StageSchedule(1, 1, fraction, strategy), {}, cfg.seed, inf.metric, inf.max_val_prompts,
                              inf.shard_size)
    splits = ("train",) + TARGETED_SETS
    offline = {s: read_rollouts(args.run / "rollouts" / s / "rollouts.parquet", tokens.stop_ids) for s in splits}
    a, b = args.seeds
    rows = []
    for label, path, key, made in todo:
        blob = torch.load(path, weights_only=False)
        model.load_state_dict(blob[key] if key else blob)
        with tempfile.TemporaryDirectory() as tmp:
            fresh = {}
            for seed in args.seeds:  # on-policy rollouts at these weights, the demo's sampling settings
                for s in splits:
                    cc = replace(collect_config(cfg, policy, s), seed=seed)
                    out = Path(tmp) / f"roll_{seed}" / s
                    rollouts = collect_rollouts(cc, out, hf_backend(model, tok, cc), tok, progress=True)
                    fresh[seed, s] = read_rollouts(rollouts, tokens.stop_ids)
            val = lambda seed: {s: fresh[seed, s] for s in TARGETED_SETS}  # noqa: E731
            off, drift = selection(featurize, offline["train"], {s: offline[s] for s in TARGETED_SETS}, sel_cfg,
                                   Path(tmp) / "off")
            on_a, _ = selection(featurize, fresh[a, "train"], val(a), sel_cfg, Path(tmp) / "on_a")
            on_b, _ = selection(featurize, fresh[b, "train"], val(b), sel_cfg, Path(tmp) / "on_b")
            on_b_shared, _ = selection(featurize, fresh[b, "train"], val(a), sel_cfg, Path(tmp) / "on_b_shared")
        rows.append({"weights": label, "selected": len(off), "off_vs_run": None if made is None else len(off & made),
                     "off_on_seed_a": len(off & on_a),
                     "off_on_seed_b": len(off & on_b), "on_on": len(on_a & on_b),
                     "on_on_shared_val": len(on_a & on_b_shared), **drift})
        r = rows[-1]
        print(f"{args.method} at {label}: top {r['selected']} of {len(offline['train'])} pool prompts; off/on (seed "
              f"{a}, {b}) {r['off_on_seed_a']}, {r['off_on_seed_b']}; on/on {r['on_on']} (shared validation "
              f"rollouts {r['on_on_shared_val']}); ESS/K sequence {r['ess_seq_mean']:.2f}, token-mean "
              f"{r['ess_popi_mean']:.2f}, below 1/4 {r['ess_low_share']:.0%}, largest token ratio {r['rho_max']:.3g}",
              flush=True)
    print(json.dumps({"run": str(args.run), "method": args.method, "seeds": args.seeds, "boundaries": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

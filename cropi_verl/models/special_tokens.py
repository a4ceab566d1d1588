"""One rule for the pad and stop tokens of a policy, used by every entry point that pads or ends a response.

- **pad**: the tokenizer's pad id; a tokenizer with none (SmolLM2, Llama) pads with its ``eos`` id, as verl's
  ``hf_tokenizer`` sets it (``verl.utils.tokenizer.set_pad_token_id``). Padding is always masked (attention mask 0,
  loss mask 0), so the value never reaches a logit that counts.
- **stop**: the generation config's ``eos_token_id`` (an int or a list) together with the tokenizer's ``eos`` and
  the model config's ``eos_token_id``. An instruct model's chat template ends a turn with a token (``<|im_end|>``)
  that its tokenizer may not call ``eos`` (SmolLM2's GGUF tokenizer says ``<|im_start|>``); its generation config
  names it. Collection (HF and vLLM), evaluation, the local GRPO sampler and verl's HF rollout stand-in all stop at
  the first id of this set, so offline and online responses end the same way, and a response whose tokens are all
  stop ids is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable


@dataclass(frozen=True)
class TokenRule:
    """``pad_id`` (module docstring) and ``stop_ids``, sorted, never empty."""

    pad_id: int
    stop_ids: tuple[int, ...]

    def first_stop(self, ids: Iterable[int]) -> int | None:
        """The index of the first stop id in ``ids``, None when there is none (a truncated response)."""
        stops = set(self.stop_ids)
        return next((i for i, t in enumerate(ids) if t in stops), None)


def _ids(value: Any) -> list[int]:
    """An ``eos_token_id`` field (None, an int or a list of ints) as a list."""
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def token_rule(tokenizer, *configs: Any) -> TokenRule:
    """The rule for ``tokenizer`` and the ``configs`` that name stop ids (a generation config, a model config or
    None each); ``ValueError`` when no stop id is named anywhere."""
    stops = sorted(set(_ids(tokenizer.eos_token_id)).union(*(_ids(getattr(c, "eos_token_id", None)) for c in configs)))
    if not stops:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: no eos token in the tokenizer, the "
                         "generation config or the model config: a response could never end")
    pad = tokenizer.pad_token_id
    return TokenRule(int(pad) if pad is not None else (_ids(tokenizer.eos_token_id) or stops)[0], tuple(stops))


def model_token_rule(model, tokenizer) -> TokenRule:
    """The rule of a loaded model (its generation and model configs) with its tokenizer."""
    return token_rule(tokenizer, getattr(model, "generation_config", None), getattr(model, "config", None))


def token_rule_of(model_path: str | Path, tokenizer=None) -> TokenRule:
    """The rule of the HF model ``model_path`` (its tokenizer, ``generation_config.json`` when present and
    ``config.json``), without loading its weights. A name that is no folder (a hub id not downloaded, an in-memory
    model's label) gives the tokenizer's rule where its configs cannot be read."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model_path))
    configs = []
    for load in (GenerationConfig.from_pretrained, AutoConfig.from_pretrained):
        try:
            configs.append(load(str(model_path)))
        except OSError:  # no generation_config.json; a name that is no folder
            if load is AutoConfig.from_pretrained and Path(model_path).expanduser().is_dir():
                raise
    return token_rule(tokenizer, *configs)

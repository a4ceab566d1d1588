"""A per-GPU memory and time plan of a CROPI run on verl: FSDP actor + sleeping vLLM replicas + influence worker.

Arithmetic on a model's config.json and the recipe's shapes (no verl). All figures are per GPU, in bytes.

Parameters: counted on the model built on the meta device (``meta_counts``: any architecture, no weights read)
when transformers is importable; without it (the GPU check machine), by Qwen2's formulas (q/k/v projections have
biases, o_proj and the MLP do not; d = head_dim = H / heads unless the config sets it), with H hidden,
I intermediate, L layers, V vocab, a = heads, g = kv heads:

    per layer  = (H a d + a d) + 2 (H g d + g d) + a d H + 3 H I + 2 H      (q, k, v, o, gate/up/down, 2 RMSNorms)
    P          = V H + L per_layer + H + (0 if tied else V H)                 (embedding, layers, final norm, head)

One layer's activations of T tokens (rough constant, bf16 flash/SDPA attention, no [T, T] matrix):
T (ACT_HIDDEN H + ACT_INTERMEDIATE I) x bytes, with ACT_HIDDEN = 16 (norm in/out, q/k/v, attention out, o_proj,
residuals) and ACT_INTERMEDIATE = 3 (gate, up, act(gate) * up).

Components at a boundary (``plan``; what is alive at once while the influence worker runs):

- actor: 0 with ``offload_actor`` (the trainer moves its optimizer state and parameters to host memory through
  verl's worker group before the pass, which empties its allocator's cache). Without it, what stays resident: the
  training peak below, since the caching allocator keeps what it reserved (verl empties it only when it syncs weights).
  The training peak (``Plan.training``, checked on its own: the worker holds nothing then): 16 P / n (fp32 params,
  fp32 grads, two fp32 Adam moments, FSDP-sharded over n GPUs) + activations of ppo_max_token_len_per_gpu tokens
  under gradient checkpointing: T H 2 L (each layer's input) + one layer's activations (bf16) + T V 4 (the fp32
  logits).
- rollout: ~0. verl puts the vLLM replicas to sleep before the actor updates and the worker runs (weights offloaded,
  KV cache freed); awake they hold gpu_memory_utilization x GPU memory (``rollout_awake``, for reference only).
- influence worker (0 when it runs on the CPU: ``WorkerSettings.on_gpu``): P b (whole weights in its dtype,
  b = 2 bf16 / 4 fp32) + P_max b (the largest parameter's gradient; the others are projected and freed as they
  arrive) + 4 B (fp32 staging of B = min(stream_buffer, P) coordinates) + activations of one micro-batch of T_mb
  tokens (checkpointing: T_mb H b L + one layer's; without: L layers' activations) + 3 x 4 V
  min(logit_chunk_tokens, n T) (one chunk's fp32 logits, log-softmax and gradient) + projector 8 k (fp64 feature)
  + 4 k ceil(S / 2^18) (the CUDA kernel's per-block partial sums, S = max(P_max, B) coordinates projected in one
  call). A micro-batch holds n full-length rows (``micro_batches``: as many as fit
  micro_batch_tokens, one at least, K at most): T_mb = n (p + T), or p + n T with ``share_prompt``.

Not counted (the ``margin``): CUDA contexts, NCCL buffers, FSDP's unsharded layer, allocator fragmentation, a
transient second copy of the largest gradient (a tied embedding's contributions being summed).

Time, an estimate: FLOPs per prompt = (2 forward + 4 backward [+ 2 recompute with checkpointing]) P T_prompt with
T_prompt = K (prompt + response), or prompt + K response with ``share_prompt`` (attention's quadratic term is not
counted), divided by peak FLOP/s x MFU (H100/H200 dense bf16 peak 989e12; MFU an assumption, default 0.3). The
actor's update per GRPO step and GPU, on the same scale: 8 P x train_batch K (prompt + response) / n FLOPs (the
recipes' actor trains with gradient checkpointing).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

GIB = 1 << 30
ACT_HIDDEN = 16
ACT_INTERMEDIATE = 3
PROJ_BLOCK = 1 << 18  # cropi_verl.influence.projection.BLOCK: coordinates per CUDA partial sum
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 / H200 (SXM)
DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp32": 4, "float32": 4}


@dataclass(frozen=True)
class ModelShape:
    """A decoder's sizes (HF config names) and, from the meta-device model, ``counts``: (parameters, largest
    tensor); None: Qwen2's formulas."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int | None = None
    counts: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, config: dict, counts: tuple[int, int] | None = None) -> "ModelShape":
        """From a config.json dict; without ``counts`` refuses another architecture (the formulas are Qwen2's)."""
        if counts is None and config.get("model_type", "qwen2") != "qwen2":
            raise ValueError(f"plan: only Qwen2 models are sized without transformers, got "
                             f"model_type={config['model_type']!r}")
        heads = config["num_attention_heads"]
        return cls(config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"], heads,
                   config.get("num_key_value_heads") or heads, config["vocab_size"],
                   bool(config.get("tie_word_embeddings", False)), config.get("head_dim"), counts)

    @property
    def d(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def layer_params(self) -> int:
        """(H a d + a d) + 2 (H g d + g d) + a d H + 3 H I + 2 H."""
        h, q, kv = self.hidden_size, self.num_attention_heads * self.d, self.num_key_value_heads * self.d
        return (h * q + q) + 2 * (h * kv + kv) + q * h + 3 * h * self.intermediate_size + 2 * h

    def params(self) -> int:
        """The counted P, else P = V H + L per_layer + H + (0 if tied else V H)."""
        if self.counts:
            return self.counts[0]
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embed
        return embed + self.num_hidden_layers * self.layer_params() + self.hidden_size + head

    def largest_param(self) -> int:
        """The counted largest tensor, else the [V, H] embedding, an [I, H] MLP matrix or the [a d, H] q
        projection."""
        if self.counts:
            return self.counts[1]
        h = self.hidden_size
        return max(self.vocab_size * h, self.intermediate_size * h, self.num_attention_heads * self.d * h)

    def layer_activation_bytes(self, tokens: int, dtype_bytes: int) -> int:
        """One layer's activations: T (16 H + 3 I) b."""
        return tokens * (ACT_HIDDEN * self.hidden_size + ACT_INTERMEDIATE * self.intermediate_size) * dtype_bytes


@dataclass(frozen=True)
class RecipeShape:
    """The verl recipe's shapes (defaults: recipes/_cropi_common.sh with the 1.5B model)."""

    n_gpus: int = 8
    max_prompt_length: int = 1024
    max_response_length: int = 2048
    responses_per_prompt: int = 8
    train_batch_size: int = 128
    ppo_max_token_len_per_gpu: int = 3 * (1024 + 2048)
    gpu_memory_utilization: float = 0.6


@dataclass(frozen=True)
class WorkerSettings:
    """The influence worker's settings (``cropi.popi`` / ``cropi.projection``)."""

    dtype: str = "bf16"
    gradient_checkpointing: bool = True
    micro_batch_tokens: int = 16384
    logit_chunk_tokens: int = 1024
    stream_buffer: int = 1 << 26
    projection_k: int = 32768
    share_prompt: bool = False  # the prompt encoded once per micro-batch (popi.share_prompt or pack=prompt_once)
    on_gpu: bool = True  # False: CPU workers, no GPU memory
    offload_actor: bool = True  # the actor's states leave the GPU during the pass (cropi.workers.offload_actor)


@dataclass(frozen=True)
class GpuSpec:
    """One GPU: memory, dense bf16 peak, the assumed model-FLOPs utilisation, the margin kept free."""

    memory_bytes: int = 80 * GIB
    peak_flops: float = H100_BF16_PEAK
    mfu: float = 0.3
    margin: float = 0.1


@dataclass(frozen=True)
class Plan:
    """Per-GPU bytes by component (``memory``: what is alive at once at a boundary), the awake replicas' figure,
    the influence pass's FLOPs and estimated seconds per prompt, and the actor update's per step and GPU."""

    params: int
    memory: dict[str, int]
    training: int  # the actor's training peak (the worker released, the replicas asleep)
    rollout_awake: int
    tokens_per_prompt: int
    flops_per_prompt: float
    seconds_per_prompt: float
    update_seconds_per_step: float
    gpu: GpuSpec

    @property
    def total(self) -> int:
        return sum(self.memory.values())

    def boundary_fits(self) -> bool:
        """What is alive at a boundary (``memory``) fits (1 - margin) x GPU memory: what the pass's gradient
        checkpointing can change (``trainer.worker_plan.resolve_checkpointing``)."""
        return self.total <= (1 - self.gpu.margin) * self.gpu.memory_bytes

    def fits(self, gpu_bytes: int | None = None) -> tuple[bool, list[str]]:
        """(the boundary's total and the actor's training peak each <= (1 - margin) x GPU memory, the reasons when
        not): at a boundary the actor and the worker share the GPU."""
        gpu_bytes = self.gpu.memory_bytes if gpu_bytes is None else gpu_bytes
        budget = (1 - self.gpu.margin) * gpu_bytes
        of = f"> {budget / GIB:.1f} GiB ({1 - self.gpu.margin:.0%} of {gpu_bytes / GIB:.1f} GiB)"
        reasons = []
        if self.total > budget:
            parts = " + ".join(f"{k} {v / GIB:.1f}" for k, v in self.memory.items())
            biggest = max(self.memory, key=self.memory.get)
            reasons += [f"at a boundary {parts} = {self.total / GIB:.1f} GiB {of}",
                        f"largest component: {biggest} ({self.memory[biggest] / GIB:.1f} GiB)"]
        if self.training > budget:
            reasons.append(f"the actor's training peak {self.training / GIB:.1f} GiB {of}")
        return not reasons, reasons


def actor_bytes(m: ModelShape, r: RecipeShape) -> int:
    """16 P / n + T H 2 L + T (16 H + 3 I) 2 + T V 4, T = ppo_max_token_len_per_gpu."""
    t = r.ppo_max_token_len_per_gpu
    states = 16 * m.params() // r.n_gpus
    activations = t * m.hidden_size * 2 * m.num_hidden_layers + m.layer_activation_bytes(t, 2)
    return states + activations + t * m.vocab_size * 4


def micro_batch_rows(r: RecipeShape, w: WorkerSettings) -> tuple[int, int]:
    """(n rows, T_mb tokens) of a full micro-batch of full-length rows: n (p + T) <= budget (p + n T with
    ``share_prompt``), 1 <= n <= K."""
    p, t, budget = r.max_prompt_length, r.max_response_length, w.micro_batch_tokens
    fit = (budget - p) // t if w.share_prompt else budget // (p + t)
    n = min(max(1, fit), r.responses_per_prompt)
    return n, p + n * t if w.share_prompt else n * (p + t)


def worker_bytes(m: ModelShape, r: RecipeShape, w: WorkerSettings) -> int:
    """P b + P_max b + 4 B + micro-batch activations + 12 V chunk + 8 k + 4 k ceil(S / 2^18)."""
    b, staging = DTYPE_BYTES[w.dtype], min(w.stream_buffer, m.params())
    rows, tokens = micro_batch_rows(r, w)
    if w.gradient_checkpointing:
        acts = tokens * m.hidden_size * b * m.num_hidden_layers + m.layer_activation_bytes(tokens, b)
    else:
        acts = m.num_hidden_layers * m.layer_activation_bytes(tokens, b)
    logits = 3 * 4 * m.vocab_size * min(w.logit_chunk_tokens, rows * r.max_response_length)
    blocks = math.ceil(max(m.largest_param(), staging) / PROJ_BLOCK)
    projector = 8 * w.projection_k + 4 * w.projection_k * blocks
    return (m.params() + m.largest_param()) * b + 4 * staging + acts + logits + projector


def tokens_per_prompt(r: RecipeShape, share_prompt: bool) -> int:
    """K (prompt + response), or prompt + K response when the prompt is encoded once."""
    k, p, t = r.responses_per_prompt, r.max_prompt_length, r.max_response_length
    return p + k * t if share_prompt else k * (p + t)


def pass_flops(m: ModelShape, tokens: int, gradient_checkpointing: bool) -> float:
    """(2 + 4 [+ 2]) P T: forward, backward, and the recomputed forward under checkpointing."""
    return (6 + 2 * gradient_checkpointing) * m.params() * tokens


def plan(m: ModelShape, r: RecipeShape = RecipeShape(), w: WorkerSettings = WorkerSettings(),
         gpu: GpuSpec = GpuSpec()) -> Plan:
    """The per-GPU plan (see the module docstring)."""
    if w.dtype not in DTYPE_BYTES:
        raise ValueError(f"plan: dtype must be one of {sorted(DTYPE_BYTES)}, got {w.dtype!r}")
    training = actor_bytes(m, r)
    memory = {"actor": 0 if w.offload_actor else training, "rollout (asleep)": 0,
              "influence worker": worker_bytes(m, r, w) if w.on_gpu else 0}
    tokens = tokens_per_prompt(r, w.share_prompt)
    flops = pass_flops(m, tokens, w.gradient_checkpointing)
    rate = gpu.peak_flops * gpu.mfu
    step_tokens = r.train_batch_size * r.responses_per_prompt * (r.max_prompt_length + r.max_response_length)
    update = pass_flops(m, step_tokens, True) / r.n_gpus
    return Plan(m.params(), memory, training, int(r.gpu_memory_utilization * gpu.memory_bytes), tokens, flops,
                flops / rate, update / rate, gpu)


def read_config(model_dir_or_config_json: str | Path) -> dict:
    """The config.json of a local model directory, or the file itself."""
    path = Path(model_dir_or_config_json)
    return json.loads((path / "config.json" if path.is_dir() else path).read_text())


def meta_counts(model: str | Path) -> tuple[dict, int, int]:
    """(config as a dict, parameter count, largest tensor's size) of ``model`` (a local directory, its config.json
    or a hub id in the HF cache), built on the meta device: any architecture, no weights read. Needs transformers.
    Built once per model and process (preflight's disk plan and memory plan both ask; a 7B build takes seconds)."""
    return _meta_counts(str(model))


@lru_cache(maxsize=8)
def _meta_counts(model: str) -> tuple[dict, int, int]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        sizes = [p.numel() for p in AutoModelForCausalLM.from_config(config).parameters()]
    return config.to_dict(), sum(sizes), max(sizes)


def grad_layers_flop_factor(model: str | Path, n: int, gradient_checkpointing: bool) -> float:
    """The pass's FLOPs with the last ``n`` blocks' gradient over the full pass's: ``influence.gradients.pass_flops``
    of ``model`` built on the meta device, after and before ``last_layers_only(n)``, (2 P + (4 + 2c) d_n) /
    ((6 + 2c) P), c = 1 under checkpointing."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from cropi_verl.influence.gradients import last_layers_only, pass_flops

    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model)))
    if gradient_checkpointing:
        net.gradient_checkpointing_enable()
    full = pass_flops(net, 1)
    last_layers_only(net, n)
    return pass_flops(net, 1) / full


def model_shape(model: str | Path) -> ModelShape:
    """``model``'s shape with the meta-device counts, or by Qwen2's formulas from its config.json (a local directory
    or the file) when transformers is absent."""
    try:
        config, params, largest = meta_counts(model)
    except ImportError:
        return ModelShape.from_config(read_config(model))
    return ModelShape.from_config(config, (params, largest))


def plan_from_files(model: str | Path, recipe: RecipeShape = RecipeShape(), worker: WorkerSettings = WorkerSettings(),
                    gpu: GpuSpec = GpuSpec()) -> Plan:
    """``plan`` for ``model`` (``model_shape``)."""
    return plan(model_shape(model), recipe, worker, gpu)


def format_plan(p: Plan) -> list[str]:
    """A short table: one line per component (GiB), the total against the GPU, the verdict, the pass time."""
    gpu = p.gpu.memory_bytes
    lines = [f"memory plan per GPU ({p.params:,} parameters), at a boundary:"]
    lines += [f"  {name:<18} {v / GIB:8.2f} GiB" for name, v in p.memory.items()]
    lines.append(f"  {'total':<18} {p.total / GIB:8.2f} GiB of {gpu / GIB:.1f} GiB ({p.total / gpu:.0%})")
    ok, reasons = p.fits()
    lines.append("  fits (margin {:.0%})".format(p.gpu.margin) if ok else "  DOES NOT FIT: " + "; ".join(reasons))
    lines.append(f"  (actor training peak: {p.training / GIB:.1f} GiB, its states offloaded during the pass when "
                 f"the actor line is 0; rollout awake: {p.rollout_awake / GIB:.1f} GiB, released while the worker runs)")
    lines.append(f"influence pass, estimate at MFU {p.gpu.mfu:.2f} of {p.gpu.peak_flops / 1e12:.0f} TFLOP/s: "
                 f"{p.seconds_per_prompt:.2f} s/prompt ({p.tokens_per_prompt} tokens, "
                 f"{p.flops_per_prompt / 1e12:.1f} TFLOP); actor update {p.update_seconds_per_step:.1f} s/step")
    return lines

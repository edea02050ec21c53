"""The model: a Llama-style decoder (RMSNorm, RoPE, SwiGLU, GQA) in one file, in nanoGPT's order.

Options from the literature switch parts of it (ModelConfig, defaults: the Llama above): positions by ALiBi or
learned absolute embeddings instead of RoPE (llmpipe/positions.py), RoPE scaled for a longer context (linear, dynamic NTK, YaRN),
sliding-window attention (optionally alternating with global layers), attention and final logit soft-capping,
a GELU MLP instead of SwiGLU, a mixture of experts of those MLPs (llmpipe/moe.py); and a masked-LM encoder (ModernBERT's
layout: LayerNorm, GeGLU, a norm on the embeddings, BERT's prediction head, bidirectional attention; llmpipe/encoder.py).
`to_hf()` names the transformers architecture computing the same logits (Llama, Mistral, Ministral, Arcee, Mixtral,
ModernBERT) or, for a combination none computes, says why in `export_blocker()`.

Parameters carry the Hugging Face Llama names (model.embed_tokens, model.layers.N.self_attn.q_proj,
..., model.norm, lm_head) and RoPE uses HF's rotate-half layout, so `state_dict()` saved with
safetensors beside `config.to_hf()` is a checkpoint `transformers.AutoModelForCausalLM` loads as it
is: no key map, no permutation (compare torchtitan's from_hf_map + _permute).

The formulas here are what runs on CUDA, under torch.compile and in cached generation. Eager CPU
training and evaluation run each block as `cpu_ops.block` (same values, one hand-written backward
pass per block) unless a projection is wrapped (LoRA); tests/test_cpu_ops.py holds the two paths equal.

Shapes: B batch, T time (new tokens), S cached + new positions, C n_embd, H heads, K kv heads, D head_dim, V vocab.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmpipe import cpu_ops
from llmpipe.moe import MoE
from llmpipe.positions import alibi_slopes, apply_rope, rope_cache, scaled_rope

# name -> (n_layer, n_embd, n_head, n_kv_head); parameter counts at a 4k vocabulary, tied embeddings
MAX_POSITIONS = 1 << 20  # the longest context a checkpoint may claim: its rope tables are made at load
PRESETS = {
    "tiny": (4, 128, 4, 4),  # ~1.3M (0.5M of it the embedding)
    "small": (6, 384, 6, 2),  # ~10M: nanoGPT's baby-shakespeare size
    "124m": (12, 768, 12, 12),  # GPT-2 small's shape
    "350m": (24, 1024, 16, 8),  # GPT-2 medium's shape
}

POSITIONS = ("rope", "alibi", "learned")
ROPE_SCALINGS = ("none", "linear", "dynamic", "yarn")
MLPS = ("swiglu", "gelu", "geglu")
NORMS = ("rmsnorm", "layernorm")


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_kv_head: int = 4
    intermediate_size: int = 0  # 0: Llama's rule, 8/3 * n_embd rounded up to a multiple of 64
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 3
    num_labels: int = 0  # 0: a causal LM (lm_head); n: a sequence scorer with HF's `score` head of n outputs instead (a reward model: 1)
    # options; the defaults are the Llama model
    positions: str = "rope"  # rope; alibi (Press et al. 2022: a per-head penalty linear in distance, no position weights); learned (GPT-2's absolute embeddings)
    rope_scaling: str = "none"  # RoPE stretched to rope_factor x the trained context: linear (position interpolation), dynamic (NTK), yarn
    rope_factor: float = 1.0
    rope_original_max_seq_len: int = 0  # dynamic, yarn: the context trained at (0: max_seq_len / rope_factor)
    sliding_window: int = 0  # each position attends to itself and the sliding_window - 1 before it (Mistral); 0: to all before it
    global_every: int = 0  # with sliding_window: every n-th layer (n, 2n, ...) attends to all positions (Gemma 2: 2); 0: none
    attn_softcap: float = 0.0  # attention scores become cap * tanh(score / cap) (Gemma 2: 50); 0: off
    final_softcap: float = 0.0  # the same on the output logits (Gemma 2: 30)
    mlp: str = "swiglu"  # swiglu (Llama), or gelu: down(gelu(up(x))), GPT-2's two-matrix MLP; or geglu: down(gelu(gate(x)) * up(x))
    # the encoder's options (pretrain objective "mlm" sets causal false, embed_norm and mlm_head; ModernBERT adds layernorm, geglu)
    norm: str = "rmsnorm"  # rmsnorm (Llama), or layernorm: LayerNorm without a bias (ModernBERT)
    embed_norm: bool = False  # a norm on the token embeddings, standing in for layer 0's attention norm (ModernBERT)
    causal: bool = True  # False: every position attends to every other (an encoder, for masked-LM pre-training)
    mlm_head: bool = False  # BERT's prediction head before lm_head (dense, exact GELU, norm) and a bias on lm_head
    # mixture of experts (llmpipe/moe.py; exported as Mixtral); 0 experts: the dense MLP
    n_experts: int = 0  # experts per layer, each an MLP of intermediate_size
    experts_per_token: int = 2  # top-k routing
    router_aux_loss_coef: float = 0.01  # the load-balancing loss's weight in the training loss (Switch: 0.01)
    capacity_factor: float = 0.0  # training only: an expert takes at most ceil(c * tokens * k / n_experts) tokens; 0: dropless

    def __post_init__(self):
        self._check_types()
        if self.n_embd % self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(f"n_embd ({self.n_embd}) must divide by n_head ({self.n_head}) and n_head by n_kv_head ({self.n_kv_head})")
        if self.positions not in POSITIONS or self.rope_scaling not in ROPE_SCALINGS or self.mlp not in MLPS or self.norm not in NORMS:
            raise ValueError(f"positions, rope_scaling, mlp, norm: expected one of {POSITIONS}, {ROPE_SCALINGS}, {MLPS}, {NORMS}; got "
                             f"{self.positions!r}, {self.rope_scaling!r}, {self.mlp!r}, {self.norm!r}")
        if self.sliding_window and not self.causal:
            raise ValueError("sliding_window: a window of the positions before each one, for causal attention; an encoder (causal false) has none")
        if self.positions == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head_dim {self.n_embd // self.n_head} must be even for RoPE")
        if self.rope_scaling != "none" and (self.positions != "rope" or self.rope_factor <= 1):
            raise ValueError(f"rope_scaling {self.rope_scaling}: needs positions rope and rope_factor > 1 (got {self.positions}, {self.rope_factor})")
        if min(self.sliding_window, self.global_every, self.attn_softcap, self.final_softcap) < 0 or (self.global_every and not self.sliding_window):
            raise ValueError("sliding_window, global_every, attn_softcap, final_softcap: expected >= 0, and global_every only with a sliding_window")
        if self.n_experts and not 1 <= self.experts_per_token <= self.n_experts:
            raise ValueError(f"experts_per_token: expected 1 to n_experts ({self.n_experts}), got {self.experts_per_token}")
        if not self.intermediate_size:
            self.intermediate_size = 4 * self.n_embd if self.mlp == "gelu" else 64 * math.ceil(8 * self.n_embd / 3 / 64)

    def _check_types(self) -> None:
        """ValueError in one line for a field a config file got wrong (a string, a negative size, a huge context)."""
        for name, low in (("vocab_size", 1), ("n_layer", 1), ("n_embd", 2), ("n_head", 1), ("n_kv_head", 1),
                          ("intermediate_size", 0), ("max_seq_len", 1), ("bos_token_id", -1), ("eos_token_id", -1), ("pad_token_id", -1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value < 1 << 31:
                raise ValueError(f"{name}: expected an integer from {low} to 2**31 - 1, got {value!r}"[:200])
        if self.max_seq_len > MAX_POSITIONS:  # the rope tables hold every position, and a config is not trusted
            raise ValueError(f"max_seq_len: {self.max_seq_len} positions is more than llmpipe makes rope tables for ({MAX_POSITIONS})")
        for name in ("sliding_window", "global_every", "rope_original_max_seq_len", "n_experts", "experts_per_token"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < 1 << 31:
                raise ValueError(f"{name}: expected an integer from 0 to 2**31 - 1, got {value!r}"[:200])
        for name, low in (("rope_theta", 0), ("norm_eps", 0), ("rope_factor", 0), ("attn_softcap", -1), ("final_softcap", -1),
                          ("router_aux_loss_coef", -1), ("capacity_factor", -1)):
            value = getattr(self, name)  # softcaps, capacity_factor: 0 means off
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low < value < math.inf or (low < 0 and value < 0):
                raise ValueError(f"{name}: expected a {'positive' if low == 0 else 'non-negative'} number, got {value!r}"[:200])
        for name in ("positions", "rope_scaling", "mlp", "norm"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}: expected a string, got {getattr(self, name)!r}"[:200])
        for name in ("tie_embeddings", "embed_norm", "causal", "mlm_head"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}"[:200])

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        n_layer, n_embd, n_head, n_kv_head = PRESETS[name]
        return cls(**{"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "n_kv_head": n_kv_head, **overrides})

    @property
    def original_max_seq_len(self) -> int:
        return self.rope_original_max_seq_len or round(self.max_seq_len / self.rope_factor)

    def sliding(self, layer: int) -> bool:
        """Whether layer `layer` (from 0) attends within the sliding window (Gemma 2 with global_every 2: layers 0, 2, ...)."""
        return self.sliding_window > 0 and not (self.global_every and (layer + 1) % self.global_every == 0)

    @property
    def fusable(self) -> bool:
        """Whether the blocks can run as `cpu_ops.block` (RoPE, causal attention without a mask or a cap, RMSNorm before
        both halves of every block, a dense SwiGLU)."""
        return (self.positions == "rope" and not self.sliding_window and not self.attn_softcap and self.mlp == "swiglu"
                and self.norm == "rmsnorm" and self.causal and not self.embed_norm and not self.n_experts)

    def export_blocker(self) -> str:
        """Why no transformers architecture computes this model's logits, in one line ('' when one does)."""
        if self.positions == "alibi":
            return "ALiBi: no Hugging Face Llama-family architecture has ALiBi biases (Bloom and MPT do, with LayerNorm, biases and other MLPs)"
        if self.positions == "learned":
            return "learned absolute positions: no Hugging Face Llama-family architecture has them (GPT-2 does, with LayerNorm and biases)"
        if self.attn_softcap or self.final_softcap:
            return ("logit soft-capping: transformers has it only in Gemma 2-family models, whose blocks differ from this model's "
                    "(norms after attention and MLP, (1 + w) gains, scaled embeddings, GeGLU)")
        if self.n_experts and (not self.causal or self.norm != "rmsnorm" or self.embed_norm or self.mlm_head):
            return "a mixture of experts in an encoder (or with LayerNorm): transformers' ModernBERT has one dense MLP per layer"
        if self.n_experts and (self.mlp != "swiglu" or self.global_every):
            return "a mixture of experts with a GELU/GeGLU MLP or alternating global layers: transformers' Mixtral has SwiGLU experts and one window"
        if self.mlp == "gelu" and self.sliding_window:
            return "a GELU MLP with sliding-window attention: transformers' Llama with a two-matrix MLP (Arcee) has no sliding window"
        if not self.causal or self.norm != "rmsnorm" or self.mlp == "geglu" or self.embed_norm or self.mlm_head:
            from llmpipe.encoder import modernbert_blocker

            return modernbert_blocker(self)
        return ""

    def hf_architecture(self) -> tuple[str, str, dict]:
        """(class prefix, model_type, config keys beyond Llama's) of the transformers model computing these logits."""
        if self.n_experts:  # Mixtral: Mistral with a mixture of SwiGLU experts (dropless: llmpipe/moe.py)
            return "Mixtral", "mixtral", {"num_local_experts": self.n_experts, "num_experts_per_tok": self.experts_per_token,
                                          "router_aux_loss_coef": self.router_aux_loss_coef, "router_jitter_noise": 0.0,
                                          "output_router_logits": False, "sliding_window": self.sliding_window or None}
        if self.mlp == "gelu":  # Arcee: Llama with down(act(up(x)))
            return "Arcee", "arcee", {"hidden_act": "gelu"}
        if self.sliding_window and self.global_every:  # Ministral: Mistral with a window per layer type
            types = ["sliding_attention" if self.sliding(i) else "full_attention" for i in range(self.n_layer)]
            return "Ministral", "ministral", {"sliding_window": self.sliding_window, "layer_types": types}
        if self.sliding_window:
            return "Mistral", "mistral", {"sliding_window": self.sliding_window}
        return "Llama", "llama", {}

    def rope_parameters(self) -> dict:
        """transformers' rope_parameters: the scaling type and what its init function reads (modeling_rope_utils)."""
        rope = {"rope_type": "default" if self.rope_scaling == "none" else self.rope_scaling, "rope_theta": self.rope_theta}
        if self.rope_scaling != "none":
            rope["factor"] = self.rope_factor
        if self.rope_scaling == "yarn":
            rope["original_max_position_embeddings"] = self.original_max_seq_len
        return rope

    def to_hf(self) -> dict:
        """A config.json transformers reads as the architecture computing these logits (a LlamaConfig for the
        default model); for a combination none computes, model_type "llmpipe", which transformers refuses, and
        the reason under "llmpipe_export_blocker". llmpipe reads either back from the "llmpipe" entry."""
        prefix, model_type, extra = self.hf_architecture()
        blocker = self.export_blocker()
        if not self.causal and not blocker:  # the encoder: ModernBertForMaskedLM's config (llmpipe/encoder.py)
            from llmpipe.encoder import modernbert_config

            return modernbert_config(self)
        if blocker:
            prefix, model_type, extra = "Llmpipe", "llmpipe", {"llmpipe_export_blocker": blocker}
        # dynamic NTK scales from transformers' max_position_embeddings on: the context trained at
        context = self.original_max_seq_len if self.rope_scaling == "dynamic" else self.max_seq_len
        return {
            "architectures": [f"{prefix}ForCausalLM"], "model_type": model_type, "torch_dtype": "float32", "dtype": "float32",
            "vocab_size": self.vocab_size, "hidden_size": self.n_embd, "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.n_layer, "num_attention_heads": self.n_head, "num_key_value_heads": self.n_kv_head,
            "head_dim": self.head_dim, "max_position_embeddings": context, "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta, "rope_parameters": self.rope_parameters(),
            "tie_word_embeddings": self.tie_embeddings, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
            **extra, "llmpipe": asdict(self),
        } | ({"architectures": [f"{prefix}ForSequenceClassification"], "num_labels": self.num_labels, "tie_word_embeddings": False}
             if self.num_labels else {})  # a scorer has no lm_head to tie

    @classmethod
    def from_hf(cls, config: dict) -> "ModelConfig":
        """From a config.json (llmpipe's own fields when it has them, else a Llama's); ValueError in one line
        naming what is missing or wrong."""
        try:
            return cls._from_hf(config)
        except KeyError as e:
            raise ValueError(f"no {e.args[0]!r} field") from None
        except (AttributeError, TypeError):  # a list or string where an object belongs (rope_parameters, llmpipe)
            raise ValueError("a field holds a value of the wrong kind (an object was expected)") from None

    @classmethod
    def _from_hf(cls, config: dict) -> "ModelConfig":
        if "llmpipe" in config:
            names = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in config["llmpipe"].items() if k in names})
        if config.get("model_type") == "modernbert":
            from llmpipe.encoder import modernbert_fields

            return cls(**modernbert_fields(config))
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        scaling = rope.get("rope_type", rope.get("type", "default"))
        layer_types = config.get("layer_types") or []
        window = config.get("sliding_window") or 0 if config.get("model_type") in ("mistral", "ministral", "mixtral") else 0
        options = {"sliding_window": window}
        if window and "full_attention" in layer_types:  # Ministral: a global layer every n-th
            options["global_every"] = layer_types.index("full_attention") + 1
        context = config.get("max_position_embeddings", 2048)
        if scaling in ("linear", "dynamic", "yarn"):
            options |= {"rope_scaling": scaling, "rope_factor": rope["factor"], "rope_original_max_seq_len": rope.get("original_max_position_embeddings", 0)}
        if scaling == "dynamic":  # transformers' max_position_embeddings is where dynamic NTK starts: the context trained at
            options |= {"rope_original_max_seq_len": context}
            context = round(context * rope["factor"])
        if config.get("model_type") == "arcee":
            options["mlp"] = "gelu"
        if config.get("model_type") == "mixtral":
            options |= {"n_experts": config["num_local_experts"], "experts_per_token": config.get("num_experts_per_tok", 2),
                        "router_aux_loss_coef": config.get("router_aux_loss_coef", 0.001)}
        return cls(**options,
            vocab_size=config["vocab_size"], n_layer=config["num_hidden_layers"], n_embd=config["hidden_size"],
            n_head=config["num_attention_heads"], n_kv_head=config.get("num_key_value_heads") or config["num_attention_heads"],
            intermediate_size=config["intermediate_size"], max_seq_len=context,
            rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)), norm_eps=config.get("rms_norm_eps", 1e-6),
            tie_embeddings=config.get("tie_word_embeddings", False),
        )


CPU_OPS = True  # hand-written backward passes on CPU (llmpipe/cpu_ops.py); False runs the plain formulas everywhere


def use_cpu_ops(x) -> bool:
    """Eager fp32 CPU only: on CUDA, under torch.compile (which fuses the plain formulas) and under CPU autocast,
    the plain formulas run."""
    return CPU_OPS and x.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")


def fused_block(x, cache) -> bool:
    """Whether a block runs as `cpu_ops.block`: eager CPU without a KV cache (training and evaluation).
    `Model.forward` also asks `plain_linears`: the fused ops read the weights, not the modules."""
    return use_cpu_ops(x) and cache is None


def plain_linears(*modules) -> bool:
    """Whether every module is a plain nn.Linear. The fused paths (cpu_ops.block, the one-GEMM q/k/v and
    gate/up) read `.weight` directly, which would silently bypass a wrapper such as a LoRA layer
    (llmpipe/train/lora.py); wrapped projections are called as modules instead."""
    return all(type(m) is nn.Linear for m in modules)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 as HF's LlamaRMSNorm does."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        if use_cpu_ops(x):
            return cpu_ops.rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    """The norm cfg.norm names: RMSNorm, or LayerNorm without a bias (ModernBERT's norm_bias false)."""
    return RMSNorm(cfg.n_embd, cfg.norm_eps) if cfg.norm == "rmsnorm" else nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=False)


def norm(module: nn.Module, x):
    """x through a norm as a plain function call (Model.decode): RMSNorm, LayerNorm, or Identity (ModernBERT's layer 0)."""
    if isinstance(module, RMSNorm):
        return F.rms_norm(x, (x.shape[-1],), module.weight, module.eps)
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)
    return x


class KVCache:
    """One layer's keys and values of the positions seen so far, in buffers [B, K, capacity, D] that grow by doubling:
    a decoding step writes its one position in place, where concatenating would copy the whole cache every step.
    `Model.new_cache()` makes one per layer. A cache serves forward(cache=...) or Model.decode, not both: on fp32 CPU
    decode keeps keys with their RoPE pairs interleaved."""

    def __init__(self):
        self.k = self.v = None
        self.length = 0
        self.qkv_weight = None  # Model.decode's fp32 CPU path: the layer's [q; k; v] rows joined once, q/k pairs interleaved

    def extend(self, k, v):
        """Append k, v [B, K, T, D]; the keys and values of every position so far [B, K, S, D] (views)."""
        end = self.length + k.shape[2]
        if self.k is None or end > self.k.shape[2]:
            grown_k = k.new_empty(*k.shape[:2], max(end, 2 * end if self.k is not None else end), k.shape[3])
            grown_v = torch.empty_like(grown_k)
            if self.k is not None:
                grown_k[:, :, :self.length], grown_v[:, :, :self.length] = self.k[:, :, :self.length], self.v[:, :, :self.length]
            self.k, self.v = grown_k, grown_v
        self.k[:, :, self.length:end], self.v[:, :, self.length:end] = k, v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, rows) -> None:
        """Keep the batch rows `rows` [B'] (beam search: each new beam continues an old one)."""
        self.k, self.v = self.k.index_select(0, rows), self.v.index_select(0, rows)


def attend(q, k, v, cache: KVCache | None, mask, gqa: bool, softcap: float = 0.0, causal: bool = True):
    """Causal attention of q [B, H, T, D] over the cached and new k, v [B, K, T, D] -> [B, H, T, D]; `cache` holds the
    earlier positions and is extended in place; `mask` [B or 1, 1 or H, T, S] from `Model.attention_masks` (a left-padded
    batch, a sliding window, ALiBi's biases; always given with softcap) replaces plain causal attention; causal False (an
    encoder): every position attends to every other."""
    T = q.shape[2]
    past = 0
    if cache is not None:
        past = cache.length
        k, v = cache.extend(k, v)
    if softcap:
        return capped_attention(q, k, v, mask, softcap)
    if mask is not None:
        mask = mask.to(q.dtype) if mask.is_floating_point() else mask  # ALiBi's float biases in bf16 under autocast
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    if past == 0 and causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if T == 1 or not causal:  # one new token sees every cached position; an encoder's every position sees every other
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    causal = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)  # several new tokens after a cache
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal, enable_gqa=gqa)


def capped_attention(q, k, v, mask, cap: float):
    """Attention with scores soft-capped to (-cap, cap) before the mask and softmax, as Gemma 2's eager attention
    computes it: SDPA has no hook between the scores and the softmax."""
    if k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = torch.tanh(scores / cap) * cap
    scores = scores + mask if mask.is_floating_point() else scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)


def linear(module: nn.Module, x):
    """x through a projection: F.linear on a plain layer's weight (no module call), else the module (quantized, LoRA)."""
    return F.linear(x, module.weight, module.bias) if type(module) is nn.Linear else module(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.softcap = cfg.attn_softcap
        self.causal = cfg.causal
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None = None, mask=None):
        B, T, C = x.shape
        H, K = self.n_head, self.n_kv_head
        if cache is None and plain_linears(self.q_proj, self.k_proj, self.v_proj):
            # one GEMM for q, k and v: fewer, larger kernels (the weights stay the three HF-named parameters); not
            # with a KV cache, where a step is one token and concatenating the weights would cost more than it saves
            qkv = F.linear(x, torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)))
        else:
            qkv = torch.cat((self.q_proj(x), self.k_proj(x), self.v_proj(x)), dim=-1)
        q, k, v = qkv.view(B, T, H + 2 * K, self.head_dim).split([H, K, K], dim=2)
        if cos is not None:  # RoPE (ALiBi and learned positions rotate nothing)
            cos, sin = cos.unsqueeze(-2).to(qkv.dtype), sin.unsqueeze(-2).to(qkv.dtype)  # [(B,) T, 1, D/2]; bf16 under autocast, as HF
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D], [B, K, T, D], [B, K, T, D]
        y = attend(q, k, v, cache, mask, self.n_kv_head != self.n_head, self.softcap, self.causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # [B, T, C]
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); with mlp "gelu", GPT-2's down(gelu(up(x))) (no gate_proj; Arcee's names); with
    mlp "geglu", down(gelu(gate(x)) * up(x)) (exact erf GELU, as ModernBERT's hidden_activation "gelu")."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.act = F.gelu if cfg.mlp == "geglu" else F.silu
        if cfg.mlp in ("swiglu", "geglu"):
            self.gate_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def projections(self) -> tuple[nn.Module, ...]:
        return (self.gate_proj, self.up_proj, self.down_proj) if hasattr(self, "gate_proj") else (self.up_proj, self.down_proj)

    def forward(self, x):
        if not hasattr(self, "gate_proj"):
            return self.down_proj(F.gelu(self.up_proj(x)))
        if x.shape[1] > 1 and plain_linears(self.gate_proj, self.up_proj):
            # one matmul for gate and up: fewer, larger GEMMs (the weights stay two HF-named parameters); not for one
            # token (a cached decoding step), where concatenating the weights costs more than it saves
            gate, up = F.linear(x, torch.cat((self.gate_proj.weight, self.up_proj.weight))).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = make_norm(cfg)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = make_norm(cfg)
        self.mlp = MoE(cfg) if cfg.n_experts else MLP(cfg)

    def projections(self) -> tuple[nn.Module, ...]:
        a = self.self_attn
        return a.q_proj, a.k_proj, a.v_proj, a.o_proj, *self.mlp.projections()

    def forward(self, x, rope, cache=None, mask=None):
        """rope: `cpu_ops.rope_freqs` (a tensor) to run as `cpu_ops.block`, else (cos, sin) [T, D/2] ((None, None)
        without RoPE); the caller chooses (`Model.forward`: `fused_block`, `ModelConfig.fusable` and plain projections
        in every block). mask: this layer's from `Model.attention_masks`."""
        if isinstance(rope, torch.Tensor):
            a, m = self.self_attn, self.mlp
            return cpu_ops.block(x, self.input_layernorm.weight, a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight,
                                 self.post_attention_layernorm.weight, m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight,
                                 rope, a.n_head, a.n_kv_head, self.input_layernorm.eps)
        x = x + self.self_attn(self.input_layernorm(x), *rope, cache, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """HF's `LlamaModel` part (the `model.` prefix of every name but lm_head)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.positions == "learned":  # GPT-2's wpe
            self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.n_embd)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        if cfg.embed_norm:  # ModernBERT: the embeddings are normalized, and layer 0 normalizes nothing again
            self.embed_norm = make_norm(cfg)
            self.layers[0].input_layernorm = nn.Identity()


class MLMHead(nn.Module):
    """BERT's prediction head between the final norm and lm_head: norm(gelu(dense(x))) (ModernBertPredictionHead)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.norm = make_norm(cfg)

    def forward(self, x):
        return self.norm(F.gelu(self.dense(x)))


class Model(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        if cfg.num_labels:  # HF's LlamaForSequenceClassification: the decoder and `score`, no lm_head
            self.score = nn.Linear(cfg.n_embd, cfg.num_labels, bias=False)
        else:
            if cfg.mlm_head:
                self.head = MLMHead(cfg)
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.mlm_head)  # ModernBERT's decoder has a bias
            if cfg.tie_embeddings:
                self.lm_head.weight = self.model.embed_tokens.weight
        self._rope_buffers()
        self.activation_checkpointing = False
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the projections into the residual stream
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @classmethod
    def from_checkpoint(cls, path, device: str = "cpu", encoder: bool = False) -> "Model":
        """The model of a checkpoint directory (llmpipe's, a quantized one, or a Llama checkpoint transformers wrote), weights loaded.

        InputError (one line naming the file) when config.json is not a model config or the weights do not fit it; the
        check runs before any weight is allocated, so a config claiming a huge model cannot exhaust memory. A masked-LM
        encoder is refused unless `encoder` (generation, evaluation and fine-tuning need a causal LM)."""
        from llmpipe.artifacts.checkpoint import load_checkpoint
        from llmpipe.encoder import encoder_refusal, from_modernbert, is_encoder, is_modernbert
        from llmpipe.errors import InputError

        tensors, config, _, _ = load_checkpoint(path, device=device)
        if is_encoder(config) and not encoder:
            raise InputError(encoder_refusal(path, "generate or score text left to right"))
        try:
            cfg = ModelConfig.from_hf(config)
            tensors = from_modernbert(tensors, cfg) if is_modernbert(config) else tensors
            shapes = cls._shapes(cfg, config.get("quantization"), tensors)
        except ValueError as e:
            raise InputError(f"{Path(path) / 'config.json'}: not a model config llmpipe can load ({e}); re-run the step that wrote it") from None
        missing = [k for k in shapes if k not in tensors and not (k == "lm_head.weight" and cfg.tie_embeddings)]  # tied: one matrix
        unexpected = [k for k in tensors if k not in shapes]
        wrong = [f"{k} {list(tensors[k].shape)}, config says {list(v)}" for k, v in shapes.items() if k in tensors and tensors[k].shape != v]
        if missing or unexpected or wrong:
            raise InputError(f"{path}: the weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                             f"wrong shape {wrong[:2]}); re-run the step that wrote it")
        model = cls(cfg).to(device)
        if config.get("quantization"):  # a quantize stage output: its layers become QuantLinear (llmpipe/quant.py)
            from llmpipe.quant import swap_quantized_linears

            swap_quantized_linears(model, config["quantization"])
        model.load_state_dict(tensors, strict=False)
        return model

    @classmethod
    def _shapes(cls, cfg: ModelConfig, quantization, tensors: dict) -> dict[str, torch.Size]:
        """Every weight's shape as the config makes it, from a model on the meta device (no memory); ValueError when the
        config names more layers than the file holds (so a config's n_layer cannot make millions of modules)."""
        layers = {int(m.group(1)) for k in tensors if (m := re.match(r"model\.layers\.(\d+)\.", k))}
        if cfg.n_layer > len(layers):
            raise ValueError(f"n_layer {cfg.n_layer}, but the weights hold {len(layers)} layer{'s' * (len(layers) != 1)}")
        with torch.device("meta"):
            skeleton = cls(cfg)
            if quantization:
                from llmpipe.quant import swap_quantized_linears

                if not isinstance(quantization, dict) or not isinstance(quantization.get("modules"), list):
                    raise ValueError("quantization: expected an object listing the quantized modules")
                try:
                    swap_quantized_linears(skeleton, quantization)
                except (AttributeError, TypeError) as e:  # a module name the model does not have
                    raise ValueError(f"quantization: {' '.join(str(e).split())[:120]}") from None
        return {k: v.shape for k, v in skeleton.state_dict().items()}

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _rope_buffers(self) -> None:
        """RoPE's cos, sin [max_seq_len, D/2] (scaled as cfg.rope_scaling says); empty without RoPE."""
        cfg = self.config
        if cfg.positions != "rope":
            cos = sin = torch.empty(0)
        elif cfg.rope_scaling in ("linear", "yarn"):
            cos, sin = rope_cache(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta, *scaled_rope(cfg, cfg.max_seq_len))
        else:  # dynamic NTK: the plain frequencies up to the trained context (positions() recomputes past it)
            cos, sin = rope_cache(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # [max_seq_len, D/2]
        self.register_buffer("rope_sin", sin, persistent=False)

    def set_max_seq_len(self, max_seq_len: int) -> None:
        """Accept sequences up to max_seq_len (evaluating past the trained length): RoPE and ALiBi positions extend;
        learned absolute positions have no embedding past the table they were trained with."""
        if self.config.positions == "learned" and max_seq_len > self.config.max_seq_len:
            raise ValueError(f"learned absolute positions end at {self.config.max_seq_len} (the trained table); RoPE and ALiBi models "
                             f"extend to {max_seq_len}, this one cannot")
        device = self.model.embed_tokens.weight.device
        self.config = replace(self.config, max_seq_len=max_seq_len)
        self._rope_buffers()
        self.rope_cos, self.rope_sin = self.rope_cos.to(device), self.rope_sin.to(device)

    def forward(self, idx, targets=None, cache: list | None = None, left_pad=None):
        """idx [B, T] -> logits [B, T, V] (and the mean loss over targets != -1); cache: `new_cache()`, filled in place.

        left_pad [B]: pad tokens at the start of each row (a batch of prompts of different lengths, llmpipe/decoding.py):
        no position attends to them, and each row counts positions from its first real token."""
        cfg = self.config
        past = cache[0].length if cache else 0
        position = self.positions(idx, past, left_pad)
        cos, sin = self.rope(position, past)
        masks = self.attention_masks(idx, past, left_pad)
        fused = (cfg.fusable and masks[0] is None and fused_block(idx, cache)
                 and all(plain_linears(*block.projections()) for block in self.model.layers))
        rope = cpu_ops.rope_freqs(cos, sin, cfg.n_head + cfg.n_kv_head) if fused else (cos, sin)
        x = self.embed(idx, position)  # [B, T, C]
        for i, block in enumerate(self.model.layers):
            if self.activation_checkpointing and self.training and cache is None:
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(block, x, rope, None, masks[i], use_reentrant=False)
            else:
                x = block(x, rope, cache[i] if cache is not None else None, masks[i])
        x = self.model.norm(x)
        x = self.head(x) if cfg.mlm_head else x
        logits = self.score(x) if cfg.num_labels else self.cap(self.lm_head(x))  # [B, T, V] (a scorer's: [B, T, num_labels])
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_cache(self) -> list[KVCache]:
        """An empty KV cache: one KVCache per layer, for forward(cache=...) and decode()."""
        return [KVCache() for _ in self.model.layers]

    def embed(self, idx, position):
        """The token embeddings [B, T, C], plus the learned position embeddings with positions "learned"."""
        x = self.model.embed_tokens(idx)
        x = x + self.model.embed_positions(position) if self.config.positions == "learned" else x
        return self.model.embed_norm(x) if self.config.embed_norm else x

    def cap(self, logits):
        """The final logits soft-capped to (-final_softcap, final_softcap) (Gemma 2), or as they are."""
        cap = self.config.final_softcap
        return torch.tanh(logits / cap) * cap if cap else logits

    def positions(self, idx, past: int, left_pad=None):
        """Position ids of idx [B, T] after `past` cached positions: [T], or [B, T] counted from each row's first real
        token when left_pad [B] says how many pads open each row."""
        T = idx.shape[1]
        if past + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {past + T} tokens is longer than max_seq_len {self.config.max_seq_len}")
        position = torch.arange(past, past + T, device=idx.device)  # [T]
        return position if left_pad is None else (position[None] - left_pad[:, None]).clamp(min=0)  # [B, T]

    def rope(self, position, past: int):
        """RoPE's cos, sin at `position` ([T, D/2], or [B, T, D/2]); (None, None) without RoPE."""
        cfg = self.config
        if cfg.positions != "rope":
            return None, None
        seen = int(position.max()) + 1 if cfg.rope_scaling == "dynamic" else 0
        if seen > cfg.original_max_seq_len:  # dynamic NTK past the trained context: frequencies for this length (as HF)
            cos, sin = (t.to(position.device) for t in rope_cache(seen, cfg.head_dim, cfg.rope_theta, *scaled_rope(cfg, seen)))
            return cos[position], sin[position]
        if position.dim() == 1:  # a slice: no gather
            T = position.shape[0]
            return self.rope_cos[past:past + T].to(position.device), self.rope_sin[past:past + T].to(position.device)
        return self.rope_cos.to(position.device)[position], self.rope_sin.to(position.device)[position]

    def attention_masks(self, idx, past: int, left_pad=None) -> list:
        """Each layer's attention mask for idx [B, T] after `past` cached positions: [B or 1, 1, T, S] bool (True:
        attend), or with ALiBi [B or 1, H, T, S] float (the bias, -inf where not attending); None for every layer when
        attention is plain causal (SDPA's is_causal: the default model's path)."""
        cfg = self.config
        T = idx.shape[1]
        if left_pad is None and not (cfg.sliding_window or cfg.positions == "alibi" or cfg.attn_softcap):
            return [None] * cfg.n_layer
        query = torch.arange(past, past + T, device=idx.device)  # [T]
        key = torch.arange(past + T, device=idx.device)  # [S]
        distance = query[:, None] - key  # [T, S]
        allowed = distance >= 0 if cfg.causal else torch.ones_like(distance, dtype=torch.bool)  # an encoder: every key
        if left_pad is not None:  # minus the pads; a pad query sees itself, so no row of the softmax is empty (NaN)
            allowed = allowed & ((key >= left_pad[:, None, None]) | (distance == 0))  # [B, T, S]
        allowed = allowed.view(-1, 1, T, past + T)

        def mask(sliding: bool):
            m = allowed & (distance < cfg.sliding_window) if sliding else allowed
            if cfg.positions != "alibi":
                return m
            apart = distance if cfg.causal else distance.abs()  # an encoder: keys after the query are as far as keys before
            bias = -alibi_slopes(cfg.n_head).to(idx.device)[:, None, None] * apart  # [H, T, S]: the paper's m * -(i - j)
            return bias.masked_fill(~m, float("-inf"))  # [B or 1, H, T, S]

        kinds = {sliding: mask(sliding) for sliding in {cfg.sliding(i) for i in range(cfg.n_layer)}}
        return [kinds[cfg.sliding(i)] for i in range(cfg.n_layer)]

    @torch.inference_mode()
    def decode(self, idx, cache: list[KVCache], left_pad=None):
        """The next-token logits [B, V] (last position only) of idx [B, T] after the cached positions (`cache`:
        `new_cache()`, filled in place): forward's formulas as plain function calls, for generation
        (llmpipe/decoding.py). A decoding step of a small model is mostly per-call overhead (module calls, per-call
        checks, the autograd Functions of cpu_ops; benchmarks/decode_speed.py), none of which runs here.
        tests/test_decoding.py holds the tokens it gives to transformers'."""
        cfg = self.config
        B, T = idx.shape
        H, K, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        past = cache[0].length
        position = self.positions(idx, past, left_pad)
        cos, sin = self.rope(position, past)
        masks = self.attention_masks(idx, past, left_pad)
        x = F.embedding(idx, self.model.embed_tokens.weight)  # [B, T, C]
        if cfg.positions == "learned":
            x = x + F.embedding(position, self.model.embed_positions.weight)
        if cfg.embed_norm:
            x = norm(self.model.embed_norm, x)
        # fp32 on CPU: q, k and v from one GEMM on weights joined once per generation, with each RoPE pair (i, i + D/2)
        # of q and k in adjacent rows, so RoPE is one complex multiply (cpu_ops' layout; q.k is the same in any
        # order of head dimensions shared by q and k, and v keeps its order). A cache made here holds such keys.
        joined = x.dtype == torch.float32 and x.device.type == "cpu"
        if cos is not None:
            if joined:
                freqs = torch.complex(cos, sin).unsqueeze(-2)  # [(B,) T, 1, D/2]
            cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)  # [(B,) T, 1, D/2]
        for block, layer, mask in zip(self.model.layers, cache, masks):
            a, m = block.self_attn, block.mlp
            h = norm(block.input_layernorm, x)
            if joined and plain_linears(a.q_proj, a.k_proj, a.v_proj):
                if layer.qkv_weight is None:
                    rows = cpu_ops._interleaved_rows(H + K, K, D, x.device)[0]
                    layer.qkv_weight = torch.cat((a.q_proj.weight, a.k_proj.weight, a.v_proj.weight))[rows]
                qkv = F.linear(h, layer.qkv_weight).view(B, T, H + 2 * K, D)
                qk = qkv[:, :, :H + K] if cos is None else torch.view_as_real(cpu_ops._as_complex(qkv[:, :, :H + K]) * freqs).flatten(-2)
                v = qkv[:, :, H + K:].transpose(1, 2)
            else:
                qk = torch.cat((linear(a.q_proj, h), linear(a.k_proj, h)), dim=-1).view(B, T, H + K, D)
                qk = qk if cos is None else apply_rope(qk, cos, sin)
                v = linear(a.v_proj, h).view(B, T, K, D).transpose(1, 2)
            q, k = qk.transpose(1, 2).split([H, K], dim=1)  # [B, H, T, D], [B, K, T, D]
            y = attend(q, k, v, layer, mask, K != H, a.softcap, a.causal).transpose(1, 2).reshape(B, T, cfg.n_embd)
            x = x + linear(a.o_proj, y)
            h = norm(block.post_attention_layernorm, x)
            if cfg.n_experts:  # dropless in evaluation (llmpipe/moe.py)
                x = x + m(h)
            elif cfg.mlp == "gelu":
                x = x + linear(m.down_proj, F.gelu(linear(m.up_proj, h)))
            else:
                x = x + linear(m.down_proj, m.act(linear(m.gate_proj, h)) * linear(m.up_proj, h))
        x = norm(self.model.norm, x[:, -1])
        x = self.head(x) if cfg.mlm_head else x
        return self.cap(linear(self.lm_head, x))

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights counted once
        return n - self.model.embed_tokens.weight.numel() if non_embedding else n

    def estimate_flops(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 per matmul weight (the input embedding is a lookup) + attention (nanochat's count);
        of a mixture of experts, the weights of the k experts a token goes to and the router's."""
        cfg = self.config
        # untied: the embedding is a lookup, lm_head a matmul; tied: the one matrix is lm_head's matmul
        n = self.num_params() - (0 if cfg.tie_embeddings else self.model.embed_tokens.weight.numel())
        if cfg.n_experts:
            experts = sum(p.numel() for block in self.model.layers for p in block.mlp.experts.parameters())
            n -= experts * (cfg.n_experts - cfg.experts_per_token) // cfg.n_experts
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 eos_token_id: int | None = None, use_cache: bool = True, generator: torch.Generator | None = None):
        """idx [B, T] -> [B, T + new]: greedy when temperature is 0, else nucleus (top-p) sampling; stops when every row
        hit eos (later tokens of a row that did are the pad id). llmpipe/decoding.py has every other strategy."""
        from llmpipe.decoding import Decoding, token_steps

        was_training = self.training
        self.eval()
        d = Decoding(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        eos = () if eos_token_id is None else (eos_token_id,)
        new = list(token_steps(self, idx.tolist(), d, eos, generator, use_cache))
        self.train(was_training)
        return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx

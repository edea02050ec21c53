"""The model: a Llama-style decoder (RMSNorm, RoPE, SwiGLU, GQA) in one file, in nanoGPT's order.

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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmpipe import cpu_ops

# name -> (n_layer, n_embd, n_head, n_kv_head); parameter counts at a 4k vocabulary, tied embeddings
MAX_POSITIONS = 1 << 20  # the longest context a checkpoint may claim: its rope tables are made at load
PRESETS = {
    "tiny": (4, 128, 4, 4),  # ~1.3M (0.5M of it the embedding)
    "small": (6, 384, 6, 2),  # ~10M: nanoGPT's baby-shakespeare size
    "124m": (12, 768, 12, 12),  # GPT-2 small's shape
    "350m": (24, 1024, 16, 8),  # GPT-2 medium's shape
}


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

    def __post_init__(self):
        self._check_types()
        if self.n_embd % self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(f"n_embd ({self.n_embd}) must divide by n_head ({self.n_head}) and n_head by n_kv_head ({self.n_kv_head})")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head_dim {self.n_embd // self.n_head} must be even for RoPE")
        if not self.intermediate_size:
            self.intermediate_size = 64 * math.ceil(8 * self.n_embd / 3 / 64)

    def _check_types(self) -> None:
        """ValueError in one line for a field a config file got wrong (a string, a negative size, a huge context)."""
        for name, low in (("vocab_size", 1), ("n_layer", 1), ("n_embd", 2), ("n_head", 1), ("n_kv_head", 1),
                          ("intermediate_size", 0), ("max_seq_len", 1), ("bos_token_id", -1), ("eos_token_id", -1), ("pad_token_id", -1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value < 1 << 31:
                raise ValueError(f"{name}: expected an integer from {low} to 2**31 - 1, got {value!r}"[:200])
        if self.max_seq_len > MAX_POSITIONS:  # the rope tables hold every position, and a config is not trusted
            raise ValueError(f"max_seq_len: {self.max_seq_len} positions is more than llmpipe makes rope tables for ({MAX_POSITIONS})")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
                raise ValueError(f"{name}: expected a positive number, got {value!r}"[:200])
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings: expected true or false, got {self.tie_embeddings!r}"[:200])

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        n_layer, n_embd, n_head, n_kv_head = PRESETS[name]
        return cls(**{"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "n_kv_head": n_kv_head, **overrides})

    def to_hf(self) -> dict:
        """A config.json that transformers reads as a LlamaConfig."""
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32", "dtype": "float32",
            "vocab_size": self.vocab_size, "hidden_size": self.n_embd, "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.n_layer, "num_attention_heads": self.n_head, "num_key_value_heads": self.n_kv_head,
            "head_dim": self.head_dim, "max_position_embeddings": self.max_seq_len, "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_embeddings, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
            "llmpipe": asdict(self),
        } | ({"architectures": ["LlamaForSequenceClassification"], "num_labels": self.num_labels, "tie_word_embeddings": False}
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
        rope = config.get("rope_parameters") or {}
        return cls(
            vocab_size=config["vocab_size"], n_layer=config["num_hidden_layers"], n_embd=config["hidden_size"],
            n_head=config["num_attention_heads"], n_kv_head=config.get("num_key_value_heads") or config["num_attention_heads"],
            intermediate_size=config["intermediate_size"], max_seq_len=config.get("max_position_embeddings", 2048),
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


# --- rotary position embedding, HF's rotate-half layout (pairs are (i, i + D/2), not (2i, 2i+1)) ----------


def rope_cache(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [seq_len, D/2] (HF repeats them to [seq_len, D]; the halves are equal)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # [D/2]
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # [T, D/2]
    return freqs.cos(), freqs.sin()


def apply_rope(x, cos, sin):
    """Rotate each pair (x[i], x[i + D/2]) by its position's angle. x [B, T, H, D]; cos, sin [T, 1, D/2] or, when
    rows count positions differently (a left-padded batch), [B, T, 1, D/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


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


def attend(q, k, v, cache: KVCache | None, mask, gqa: bool):
    """Causal attention of q [B, H, T, D] over the cached and new k, v [B, K, T, D] -> [B, H, T, D]; `cache` holds the
    earlier positions and is extended in place; `mask` [B, 1, T, S] for a left-padded batch."""
    T = q.shape[2]
    past = 0
    if cache is not None:
        past = cache.length
        k, v = cache.extend(k, v)
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if T == 1:  # one new token sees every cached position
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    causal = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)  # several new tokens after a cache
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal, enable_gqa=gqa)


def linear(module: nn.Module, x):
    """x through a projection: F.linear on a plain layer's weight (no module call), else the module (quantized, LoRA)."""
    return F.linear(x, module.weight) if type(module) is nn.Linear else module(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
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
        cos, sin = cos.unsqueeze(-2).to(qkv.dtype), sin.unsqueeze(-2).to(qkv.dtype)  # [(B,) T, 1, D/2]; bf16 under autocast, as HF
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D], [B, K, T, D], [B, K, T, D]
        y = attend(q, k, v, cache, mask, self.n_kv_head != self.n_head)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # [B, T, C]
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def forward(self, x):
        if x.shape[1] > 1 and plain_linears(self.gate_proj, self.up_proj):
            # one matmul for gate and up: fewer, larger GEMMs (the weights stay two HF-named parameters); not for one
            # token (a cached decoding step), where concatenating the weights costs more than it saves
            gate, up = F.linear(x, torch.cat((self.gate_proj.weight, self.up_proj.weight))).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def projections(self) -> tuple[nn.Module, ...]:
        a, m = self.self_attn, self.mlp
        return a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj

    def forward(self, x, rope, cache=None, mask=None):
        """rope: `cpu_ops.rope_freqs` (a tensor) to run as `cpu_ops.block`, else (cos, sin) [T, D/2]; the caller
        chooses (`Model.forward`: `fused_block` and plain projections in every block)."""
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
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)


class Model(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        if cfg.num_labels:  # HF's LlamaForSequenceClassification: the decoder and `score`, no lm_head
            self.score = nn.Linear(cfg.n_embd, cfg.num_labels, bias=False)
        else:
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
            if cfg.tie_embeddings:
                self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_cache(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # [max_seq_len, D/2]
        self.register_buffer("rope_sin", sin, persistent=False)
        self.activation_checkpointing = False
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the projections into the residual stream
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @classmethod
    def from_checkpoint(cls, path, device: str = "cpu") -> "Model":
        """The model of a checkpoint directory (llmpipe's, a quantized one, or a Llama checkpoint transformers wrote), weights loaded.

        InputError (one line naming the file) when config.json is not a model config or the weights do not fit it; the
        check runs before any weight is allocated, so a config claiming a huge model cannot exhaust memory."""
        from llmpipe.artifacts.checkpoint import load_checkpoint
        from llmpipe.errors import InputError

        tensors, config, _, _ = load_checkpoint(path, device=device)
        try:
            cfg = ModelConfig.from_hf(config)
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

    def forward(self, idx, targets=None, cache: list | None = None, left_pad=None):
        """idx [B, T] -> logits [B, T, V] (and the mean loss over targets != -1); cache: `new_cache()`, filled in place.

        left_pad [B]: pad tokens at the start of each row (a batch of prompts of different lengths, llmpipe/decoding.py):
        no position attends to them, and each row counts positions from its first real token."""
        B, T = idx.shape
        past = cache[0].length if cache else 0
        cos, sin, mask = self.positions(idx, past, left_pad)
        fused = mask is None and fused_block(idx, cache) and all(plain_linears(*block.projections()) for block in self.model.layers)
        rope = cpu_ops.rope_freqs(cos, sin, self.config.n_head + self.config.n_kv_head) if fused else (cos, sin)
        x = self.model.embed_tokens(idx)  # [B, T, C]
        for i, block in enumerate(self.model.layers):
            if self.activation_checkpointing and self.training and cache is None:
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope, cache[i] if cache is not None else None, mask)
        x = self.model.norm(x)
        logits = self.score(x) if self.config.num_labels else self.lm_head(x)  # [B, T, V] (a scorer's: [B, T, num_labels])
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_cache(self) -> list[KVCache]:
        """An empty KV cache: one KVCache per layer, for forward(cache=...) and decode()."""
        return [KVCache() for _ in self.model.layers]

    def positions(self, idx, past: int, left_pad=None):
        """RoPE's cos, sin for idx [B, T] after `past` cached positions ([T, D/2], or [B, T, D/2] when left_pad [B] says
        how many pads open each row), and the attention mask [B, 1, T, S] of a left-padded batch (None without pads)."""
        T = idx.shape[1]
        if past + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {past + T} tokens is longer than max_seq_len {self.config.max_seq_len}")
        if left_pad is None:
            return self.rope_cos[past:past + T].to(idx.device), self.rope_sin[past:past + T].to(idx.device), None
        query = torch.arange(past, past + T, device=idx.device)  # [T]
        position = (query[None] - left_pad[:, None]).clamp(min=0)  # [B, T]
        key = torch.arange(past + T, device=idx.device)  # [S]
        # causal, minus the pads; a pad query sees itself, so no row of the softmax is empty (NaN)
        mask = (key <= query[:, None]) & ((key >= left_pad[:, None, None]) | (key == query[:, None]))  # [B, T, S]
        return self.rope_cos.to(idx.device)[position], self.rope_sin.to(idx.device)[position], mask[:, None]

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
        cos, sin, mask = self.positions(idx, cache[0].length, left_pad)
        x = F.embedding(idx, self.model.embed_tokens.weight)  # [B, T, C]
        # fp32 on CPU: q, k and v from one GEMM on weights joined once per generation, with each RoPE pair (i, i + D/2)
        # of q and k in adjacent rows, so RoPE is one complex multiply (cpu_ops' layout; q.k is the same in any
        # order of head dimensions shared by q and k, and v keeps its order). A cache made here holds such keys.
        joined = x.dtype == torch.float32 and x.device.type == "cpu"
        if joined:
            freqs = torch.complex(cos, sin).unsqueeze(-2)  # [(B,) T, 1, D/2]
        cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)  # [(B,) T, 1, D/2]
        for block, layer in zip(self.model.layers, cache):
            a, m = block.self_attn, block.mlp
            h = F.rms_norm(x, (cfg.n_embd,), block.input_layernorm.weight, block.input_layernorm.eps)
            if joined and plain_linears(a.q_proj, a.k_proj, a.v_proj):
                if layer.qkv_weight is None:
                    rows = cpu_ops._interleaved_rows(H + K, K, D, x.device)[0]
                    layer.qkv_weight = torch.cat((a.q_proj.weight, a.k_proj.weight, a.v_proj.weight))[rows]
                qkv = F.linear(h, layer.qkv_weight).view(B, T, H + 2 * K, D)
                qk = torch.view_as_real(cpu_ops._as_complex(qkv[:, :, :H + K]) * freqs).flatten(-2)
                v = qkv[:, :, H + K:].transpose(1, 2)
            else:
                qk = apply_rope(torch.cat((linear(a.q_proj, h), linear(a.k_proj, h)), dim=-1).view(B, T, H + K, D), cos, sin)
                v = linear(a.v_proj, h).view(B, T, K, D).transpose(1, 2)
            q, k = qk.transpose(1, 2).split([H, K], dim=1)  # [B, H, T, D], [B, K, T, D]
            y = attend(q, k, v, layer, mask, K != H).transpose(1, 2).reshape(B, T, cfg.n_embd)
            x = x + linear(a.o_proj, y)
            h = F.rms_norm(x, (cfg.n_embd,), block.post_attention_layernorm.weight, block.post_attention_layernorm.eps)
            x = x + linear(m.down_proj, F.silu(linear(m.gate_proj, h)) * linear(m.up_proj, h))
        x = F.rms_norm(x[:, -1], (cfg.n_embd,), self.model.norm.weight, self.model.norm.eps)
        return linear(self.lm_head, x)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights counted once
        return n - self.model.embed_tokens.weight.numel() if non_embedding else n

    def estimate_flops(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 per matmul weight (the input embedding is a lookup) + attention (nanochat's count)."""
        cfg = self.config
        # untied: the embedding is a lookup, lm_head a matmul; tied: the one matrix is lm_head's matmul
        n = self.num_params() - (0 if cfg.tie_embeddings else self.model.embed_tokens.weight.numel())
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

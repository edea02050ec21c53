"""LoRA (Hu et al. 2021, arXiv:2106.09685) on llmpipe's model, laid out as PEFT 0.21 lays it out.

`apply_lora` freezes every parameter and wraps each target nn.Linear W in a `LoRALinear`:
y = W x + B A dropout(x) * alpha / r, with A [r, in] (kaiming-uniform) and B [out, r] (zeros), so the
wrapped model starts equal to the base. The wrapper holds `base_layer`, `lora_A`, `lora_B` and
`lora_dropout` under PEFT's names, so a wrapped model's state_dict keys are PEFT's with the adapter name
left out (`model.layers.0.self_attn.q_proj.lora_A.weight`) and its adapter file's keys are those plus
PEFT's `base_model.model.` prefix. `save_adapter` writes adapter_config.json + adapter_model.safetensors,
which `peft.PeftModel.from_pretrained(base, adapter_dir)` loads; `merge_lora` folds B A * alpha / r into
W and unwraps, giving back a plain model whose state_dict is a plain HF checkpoint.

    names = apply_lora(model, rank=8, alpha=16, dropout=0.05)    # then train: only LoRA parameters learn
    save_adapter(model, out / "adapter", base_model_name_or_path=checkpoint)
    merge_lora(model)                                             # then save model.state_dict() as usual

Wrapping a projection turns off the fused CPU block (`model.plain_linears`): cpu_ops.block reads weights.
Wrap before DDP and before making the optimizer (which takes only parameters that require grad).
tests/test_lora.py checks counts, PEFT's logits and the merged checkpoint's logits against transformers.
Only torch and safetensors are imported: llmpipe never imports PEFT.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
import torch.nn as nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel.base_model (LoraModel) .model (the causal LM)
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer but the output layer
OUTPUT_LAYER = "lm_head"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """base_layer(x) + lora_B(lora_A(lora_dropout(x))) * scaling, PEFT's vanilla LoRA forward."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        w = base_layer.weight
        self.base_layer = base_layer
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False, device=w.device, dtype=w.dtype)
        # dropout on the input of A only: the base path sees x unchanged (PEFT, and the LoRA paper's code)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.scaling = alpha / rank
        # PEFT's init (from microsoft/LoRA loralib): A as nn.Linear's default, B zero so that B A = 0 at start
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """B A * scaling [out, in]: what merging adds to the base weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling


# --- which linear layers a target list names (PEFT's rule for a list: the full name, or a suffix after a dot) --


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _resolve(linear_names: list[str], targets) -> list[str]:
    """The names among `linear_names` that `targets` pick, in model order; a target that picks none is a ValueError."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets:
        raise ValueError("LoRA targets are empty: name at least one linear layer, e.g. q_proj, or \"all-linear\"")
    chosen = set()
    for target in targets:
        if target == ALL_LINEAR:
            hits = [n for n in linear_names if n != OUTPUT_LAYER]
        else:
            hits = [n for n in linear_names if _matches(n, target)]
        if not hits:
            leaves = ", ".join(dict.fromkeys(n.rpartition(".")[2] for n in linear_names))
            raise ValueError(f'LoRA target "{target}" names no linear layer of the model; its linear layers are: {leaves} (or "{ALL_LINEAR}")')
        chosen.update(hits)
    return [n for n in linear_names if n in chosen]


def linear_shapes(config) -> dict[str, tuple[int, int]]:
    """name -> (in_features, out_features) of every nn.Linear of `Model(config)`, from the config alone."""
    C, I = config.n_embd, config.intermediate_size
    q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    block = {"self_attn.q_proj": (C, q), "self_attn.k_proj": (C, kv), "self_attn.v_proj": (C, kv), "self_attn.o_proj": (q, C),
             "mlp.gate_proj": (C, I), "mlp.up_proj": (C, I), "mlp.down_proj": (I, C)}
    shapes = {f"model.layers.{i}.{name}": shape for i in range(config.n_layer) for name, shape in block.items()}
    shapes[OUTPUT_LAYER] = (C, config.vocab_size)
    return shapes


def lora_parameter_count(config, rank: int, targets=DEFAULT_TARGETS) -> int:
    """The LoRA paper's count: r * (in + out) summed over the targeted linear layers (A is [r, in], B is [out, r])."""
    shapes = linear_shapes(config)
    return sum(rank * sum(shapes[name]) for name in _resolve(list(shapes), targets))


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- wrap, merge ----------------------------------------------------------------------------------------------


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """name -> LoRALinear, in model order (empty for a plain model)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16, dropout: float = 0.0, targets=DEFAULT_TARGETS) -> list[str]:
    """Freeze every parameter and wrap each targeted nn.Linear in a LoRALinear; returns the wrapped names.

    targets: leaf names ("q_proj"), full names ("model.layers.0.mlp.down_proj") or "all-linear" (all but lm_head); a
    target that names no layer is a ValueError, except in the default list, which takes those the model has.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not alpha > 0:
        raise ValueError(f"LoRA alpha must be positive, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    if lora_layers(model):
        raise ValueError("the model already has LoRA layers: merge_lora it first or apply LoRA once")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if tuple(targets) == DEFAULT_TARGETS:  # the default takes the block projections the model has: a GELU MLP has no
        # gate_proj, and a mixture's experts are 3-D tensors, not linear layers (its router, "gate", is not a target)
        targets = [t for t in DEFAULT_TARGETS if any(_matches(n, t) for n in linears)]
    names = _resolve(linears, targets)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if OUTPUT_LAYER in names and embed is not None and model.get_submodule(OUTPUT_LAYER).weight is embed.weight:
        raise ValueError("LoRA on lm_head needs untied embeddings (tie_embeddings = false): merging would change embed_tokens too")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, leaf, LoRALinear(getattr(owner, leaf), rank, alpha, dropout))
    return names


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each LoRA delta into its base weight (W += B A * alpha / r) and put the plain nn.Linear back, so the
    state_dict has the plain HF keys again; every parameter requires grad again, as in a fresh model."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to merge")
    for name, layer in layers.items():
        base = layer.base_layer
        base.weight += layer.delta_weight().to(base.weight.dtype)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# --- PEFT's adapter directory ------------------------------------------------------------------------------------


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights under the keys of PEFT's adapter_model.safetensors (CPU copies)."""
    out = {}
    for name, layer in lora_layers(model).items():
        for part in ("lora_A", "lora_B"):
            out[f"{PEFT_PREFIX}{name}.{part}.weight"] = getattr(layer, part).weight.detach().cpu().contiguous().clone()
    return out


def _target_modules(model: nn.Module, wrapped: list[str]) -> list[str]:
    """PEFT target_modules that pick exactly the wrapped layers: a leaf name where every layer of that leaf is
    wrapped, else the full names (when only some layers were targeted)."""
    inside = tuple(w + "." for w in wrapped)
    linears = wrapped + [n for n, m in model.named_modules() if type(m) is nn.Linear and not n.startswith(inside)]
    out = set()
    for name in wrapped:
        leaf = name.rpartition(".")[2]
        out.add(leaf if all(n in wrapped for n in linears if _matches(n, leaf)) else name)
    return sorted(out)


def adapter_config(model: nn.Module, base_model_name_or_path: str | None = None) -> dict:
    """PEFT's LoraConfig fields for the model's LoRA layers (peft_version is left for PEFT to fill in)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers: apply_lora first")
    settings = {(m.rank, m.alpha, m.dropout) for m in layers.values()}
    if len(settings) > 1:
        raise ValueError(f"LoRA layers differ in (rank, alpha, dropout): {sorted(settings)}; one adapter has one setting")
    rank, alpha, dropout = settings.pop()
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path, "revision": None,
        "r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": _target_modules(model, list(layers)),
        "bias": "none", "lora_bias": False, "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}, "exclude_modules": None,
    }


def save_adapter(model: nn.Module, out_dir: Path, base_model_name_or_path: str | None = None) -> Path:
    """Write out_dir/adapter_config.json + adapter_model.safetensors (PEFT's layout), the directory renamed into
    place whole (an existing one is replaced)."""
    from llmpipe.artifacts.checkpoint import save_tensors
    from llmpipe.artifacts.layout import atomic_path

    out_dir = Path(out_dir)
    config = adapter_config(model, base_model_name_or_path)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        save_tensors(adapter_tensors(model), tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        if out_dir.exists():  # os.replace cannot rename onto a non-empty directory
            shutil.rmtree(out_dir)
    return out_dir


# PEFT options this module does not implement, and the value that means "off"
_UNSUPPORTED = {"bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "lora_bias": False,
                "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {}, "exclude_modules": None}


def load_adapter(model: nn.Module, adapter_dir: Path) -> list[str]:
    """apply_lora as adapter_dir's adapter_config.json says, then load its weights (PEFT's or save_adapter's)."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{adapter_dir / ADAPTER_CONFIG}: peft_type {config.get('peft_type')!r} is not LORA")
    for key, off in _UNSUPPORTED.items():
        if config.get(key, off) not in (off, None, {}, [], False):
            raise ValueError(f"{adapter_dir / ADAPTER_CONFIG}: {key} = {config[key]!r} is not supported (expected {off!r})")
    targets = config["target_modules"]
    if isinstance(targets, str) and targets != ALL_LINEAR:
        raise ValueError(f"{adapter_dir / ADAPTER_CONFIG}: target_modules as a regular expression ({targets!r}) is not supported")
    tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    names = _resolve([n for n, m in model.named_modules() if isinstance(m, nn.Linear)], targets)
    expected = {f"{PEFT_PREFIX}{name}.{part}.weight" for name in names for part in ("lora_A", "lora_B")}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:  # checked before the model is touched
        raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS}: keys do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    apply_lora(model, rank=config["r"], alpha=config["lora_alpha"], dropout=config.get("lora_dropout", 0.0), targets=targets)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            for part in ("lora_A", "lora_B"):
                getattr(layer, part).weight.copy_(tensors[f"{PEFT_PREFIX}{name}.{part}.weight"])
    return names

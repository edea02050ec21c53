"""The masked-LM encoder as transformers' ModernBERT: its config, its tensor names, and what cannot be exported.

The encoder is llmpipe's model with options (llmpipe/model.py: norm "layernorm", mlp "geglu", embed_norm, mlm_head,
causal false), which together compute what `ModernBertForMaskedLM` computes with every layer global:

    h = LayerNorm(embed(ids))                                   model.embeddings.norm
    layer i: h += Wo(attn(LN_i(h)))   (LN_0 = Identity)        attn_norm (none in layer 0), attn.Wqkv, attn.Wo
             h += Wo(gelu(gate(LN(h))) * up(LN(h)))             mlp_norm, mlp.Wi = [gate; up], mlp.Wo
    logits = decoder(LN(gelu(dense(LN(h)))))  + bias           final_norm, head.dense, head.norm, decoder (tied)

with LayerNorms without biases (norm_bias false), exact erf GELU (hidden_activation and classifier_activation
"gelu", transformers' GELUActivation), RoPE in the rotate-half layout at global_rope_theta, no causal mask.

The names cannot match as the Llama names do: ModernBERT keeps q, k, v in one matrix (Wqkv) and gate, up in one
(Wi), where llmpipe keeps them apart so that LoRA, quantization and cpu_ops address each projection. So the
exported model.safetensors is written through `to_modernbert` and read back through `from_modernbert`; training
checkpoints (checkpoints/step-N, read only by llmpipe's resume) keep llmpipe's names.
"""

from __future__ import annotations

import re

# llmpipe name -> ModernBERT name, for every tensor that is only renamed (and per layer, below the model.layers.N. prefix)
RENAMES = {"model.embed_tokens.weight": "model.embeddings.tok_embeddings.weight", "model.embed_norm.weight": "model.embeddings.norm.weight",
           "model.norm.weight": "model.final_norm.weight", "head.dense.weight": "head.dense.weight", "head.norm.weight": "head.norm.weight",
           "lm_head.weight": "decoder.weight", "lm_head.bias": "decoder.bias"}
LAYER_RENAMES = {"input_layernorm.weight": "attn_norm.weight", "self_attn.o_proj.weight": "attn.Wo.weight",
                 "post_attention_layernorm.weight": "mlp_norm.weight", "mlp.down_proj.weight": "mlp.Wo.weight"}
# joined: ModernBERT's one matrix <- llmpipe's parts, in row order
JOINED = (("attn.Wqkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")), ("mlp.Wi", ("mlp.gate_proj", "mlp.up_proj")))


def modernbert_blocker(cfg) -> str:
    """Why transformers has no architecture for this combination of the encoder options ('' when ModernBERT computes it)."""
    if cfg.causal:
        return ("a causal LM with LayerNorm, GeGLU, an embedding norm or an MLM head: no Llama-family architecture has them "
                "(ModernBERT does, as an encoder: pretrain objective \"mlm\")")
    wanted = {"norm": "layernorm", "mlp": "geglu", "embed_norm": True, "mlm_head": True}
    wrong = [f"{k} = {getattr(cfg, k)!r}" for k, v in wanted.items() if getattr(cfg, k) != v]
    if wrong:
        return (f"an encoder with {', '.join(wrong)}: ModernBERT, transformers' RoPE encoder, has LayerNorm, a GeGLU MLP, an "
                f"embedding norm and BERT's prediction head (norm = \"layernorm\", mlp = \"geglu\")")
    if cfg.n_kv_head != cfg.n_head:
        return f"grouped-query attention ({cfg.n_kv_head} kv heads for {cfg.n_head}): ModernBERT has one key/value head per query head"
    if cfg.rope_scaling != "none" or cfg.num_labels:
        return "an encoder with RoPE scaling or a score head: not exported (ModernBERT's masked LM is plain RoPE with the MLM head)"
    return ""


def modernbert_config(cfg) -> dict:
    """ModernBertForMaskedLM's config.json for an exportable encoder: every layer global, with our RoPE theta."""
    from dataclasses import asdict

    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    return {
        "architectures": ["ModernBertForMaskedLM"], "model_type": "modernbert", "torch_dtype": "float32", "dtype": "float32",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head, "max_position_embeddings": cfg.max_seq_len,
        "hidden_activation": "gelu", "classifier_activation": "gelu", "norm_eps": cfg.norm_eps, "norm_bias": False,
        "attention_bias": False, "mlp_bias": False, "classifier_bias": False, "decoder_bias": True,
        "layer_types": ["full_attention"] * cfg.n_layer, "global_attn_every_n_layers": 1,
        "rope_parameters": {"full_attention": rope, "sliding_attention": dict(rope)}, "global_rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": 0.02,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        "cls_token_id": cfg.bos_token_id, "sep_token_id": cfg.eos_token_id, "llmpipe": asdict(cfg),
    }


def modernbert_fields(config: dict) -> dict:
    """ModelConfig's fields for a ModernBERT config.json without llmpipe's own entry (one transformers wrote);
    ValueError in one line for what llmpipe does not compute (local attention layers, biases)."""
    types = config.get("layer_types") or []
    if any(t != "full_attention" for t in types):
        raise ValueError("ModernBERT with local (sliding-window) attention layers: llmpipe's encoder has global layers only")
    if any(config.get(k) for k in ("norm_bias", "attention_bias", "mlp_bias", "classifier_bias")):
        raise ValueError("ModernBERT with biases in its norms or projections: llmpipe's encoder has none")
    rope = (config.get("rope_parameters") or {}).get("full_attention") or {}
    return {"vocab_size": config["vocab_size"], "n_layer": config["num_hidden_layers"], "n_embd": config["hidden_size"],
            "n_head": config["num_attention_heads"], "n_kv_head": config["num_attention_heads"],
            "intermediate_size": config["intermediate_size"], "max_seq_len": config.get("max_position_embeddings", 8192),
            "rope_theta": rope.get("rope_theta", config.get("global_rope_theta", 160000.0)), "norm_eps": config.get("norm_eps", 1e-5),
            "tie_embeddings": config.get("tie_word_embeddings", True), "norm": "layernorm", "mlp": "geglu", "embed_norm": True,
            "causal": False, "mlm_head": True, "pad_token_id": config.get("pad_token_id") or 0,
            "bos_token_id": config.get("bos_token_id") or 0, "eos_token_id": config.get("eos_token_id") or 0}


def is_modernbert(config: dict) -> bool:
    """Whether a config.json is an exported encoder (its weights carry ModernBERT's names)."""
    return config.get("model_type") == "modernbert"


def is_encoder(config: dict) -> bool:
    """Whether a config.json is a masked-LM encoder (llmpipe's, or a ModernBERT): it fills in masks, it writes no text."""
    return is_modernbert(config) or (isinstance(config.get("llmpipe"), dict) and config["llmpipe"].get("causal") is False)


def encoder_refusal(path, what: str) -> str:
    """The one line a stage that needs a causal LM says about an encoder checkpoint."""
    return (f"{path} is a masked-LM encoder (pretrain objective \"mlm\"): it predicts masked tokens and cannot {what}; "
            "give a causal LM (pretrain's default objective)")


def _names(n_layer: int) -> dict[str, str]:
    return RENAMES | {f"model.layers.{i}.{a}": f"model.layers.{i}.{b}" for i in range(n_layer) for a, b in LAYER_RENAMES.items()}


def to_modernbert(state: dict, cfg) -> dict:
    """llmpipe's tensors -> ModernBERT's names (q, k, v and gate, up joined); a tied decoder.weight is left out."""
    import torch

    names = _names(cfg.n_layer)
    out = {names[k]: v for k, v in state.items() if k in names and not (k == "lm_head.weight" and cfg.tie_embeddings)}
    for i in range(cfg.n_layer):
        for joined, parts in JOINED:
            out[f"model.layers.{i}.{joined}.weight"] = torch.cat([state[f"model.layers.{i}.{p}.weight"] for p in parts])
    return out


def from_modernbert(tensors: dict, cfg) -> dict:
    """ModernBERT's tensors -> llmpipe's names (Wqkv and Wi split into their parts); a name it does not know stays as it is
    (Model.from_checkpoint then refuses it as unexpected)."""
    back = {v: k for k, v in _names(cfg.n_layer).items()}
    out = {}
    for name, tensor in tensors.items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.(attn\.Wqkv|mlp\.Wi)\.weight", name)
        if m:
            parts = dict(JOINED)[m.group(2)]
            out.update({f"model.layers.{m.group(1)}.{p}.weight": piece for p, piece in zip(parts, tensor.chunk(len(parts)))})
        else:
            out[back.get(name, name)] = tensor
    return out

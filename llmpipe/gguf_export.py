"""GGUF export of a Llama checkpoint directory for llama.cpp, written the way llama.cpp's convert_hf_to_gguf.py
writes a Hugging Face Llama (its LlamaModel class), through the `gguf` package.

- Metadata: architecture "llama", context/embedding/feed-forward lengths, block count, head counts,
  rope base and dimension count, RMS-norm epsilon, vocab size, file type, quantization version.
- Tensors: gguf's own name map (model.layers.N.self_attn.q_proj -> blk.N.attn_q, ...). q_proj and k_proj
  are permuted from Hugging Face's rotate-half rope layout (pairs i, i + D/2: what llmpipe's model uses,
  see model.py) to the interleaved pairs llama.cpp's LLAMA rope rotates, with convert_hf_to_gguf's
  permute (k by its kv heads). A tied lm_head is not written: llama.cpp falls back to token_embd.
- Tokenizer: the sentencepiece model as convert's _create_vocab_sentencepiece reads it (pieces, scores,
  types: normal, unknown, control (bos/eos/pad and the chat roles), byte), tokenizer.ggml.model "llama",
  bos/eos/unk/pad ids, add_bos_token, and the Jinja chat template when the checkpoint has one.
- Types: F32, F16, BF16 store every matrix in that type; Q8_0 all matrices in Q8_0; Q4_0, Q4_1, Q5_0, Q5_1
  the block projections in that type and token_embd/output in Q8_0 (llama-quantize also keeps those two
  in higher precision). Norms stay F32, and a matrix whose rows do not split into 32-value blocks is
  stored F16, as convert does. gguf 0.19's quantizer has no K-quants.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
INSTALL_HINT = 'pip install -c .ci/constraints.txt "gguf==0.19.0"'


def import_gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError(f"GGUF export needs the gguf package: {INSTALL_HINT}") from None
    return gguf


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of each head from (i, i + D/2) pairs to (2i, 2i + 1) pairs (convert_hf_to_gguf's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def chat_template_of(directory: Path) -> str | None:
    """A checkpoint's Jinja chat template: chat_template.jinja (which wins in transformers 5), else tokenizer_config.json."""
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text()
    config = directory / "tokenizer_config.json"
    return json.loads(config.read_text()).get("chat_template") if config.is_file() else None


def tensor_type(gguf, name: str, array: np.ndarray, type_name: str):
    """The GGML type one tensor is stored in, for a file of type_name."""
    Q = gguf.GGMLQuantizationType
    if array.ndim == 1 or type_name == "F32":
        return Q.F32
    if type_name in ("F16", "BF16"):
        return Q[type_name]
    chosen = Q.Q8_0 if name in ("token_embd.weight", "output.weight") else Q[type_name]
    block = gguf.GGML_QUANT_SIZES[chosen][0]
    return chosen if array.shape[-1] % block == 0 else Q.F16


def write_gguf(checkpoint: Path, out: Path, type_name: str, tensors: dict | None = None) -> dict:
    """Write `checkpoint` (a float Llama checkpoint directory with llmpipe's tokenizer) as GGUF file `out`.

    tensors: the float state dict, when already loaded. Returns {gguf tensor name: GGML type name}."""
    gguf = import_gguf()
    from llmpipe.model import ModelConfig

    checkpoint = Path(checkpoint)
    hf = json.loads((checkpoint / "config.json").read_text())
    cfg = ModelConfig.from_hf(hf)
    if tensors is None:
        from safetensors.numpy import load_file

        tensors = load_file(str(checkpoint / "model.safetensors"))
    tensors = {k: np.asarray(v.float().numpy() if hasattr(v, "float") else v, dtype=np.float32) for k, v in tensors.items()}
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(checkpoint.name)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_kv_head)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_file_type(gguf.LlamaFileType["ALL_F32" if type_name == "F32" else f"MOSTLY_{type_name}"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(gguf, writer, checkpoint, cfg)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.n_layer)
    kinds = {}
    for hf_name, array in tensors.items():
        if hf_name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # one matrix: llama.cpp reads token_embd for the output when output.weight is absent
        if hf_name.endswith("self_attn.q_proj.weight"):
            array = rope_permute(array, cfg.n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            array = rope_permute(array, cfg.n_kv_head)
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise ValueError(f"{checkpoint}: no GGUF name for tensor {hf_name}")
        kind = tensor_type(gguf, name, array, type_name)
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, array)
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)
        kinds[name] = kind.name
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return kinds


def add_tokenizer(gguf, writer, checkpoint: Path, cfg) -> None:
    """The sentencepiece vocabulary with scores and types, special ids and the chat template."""
    from llmpipe.text.tokenizer import load_tokenizer

    tok = load_tokenizer(checkpoint)
    if not hasattr(tok, "sp"):  # quantize's plan refuses this in one line first
        raise ValueError(f"{checkpoint}: GGUF export writes a sentencepiece vocabulary; this tokenizer is {tok.model_type}")
    sp = tok.sp
    T = gguf.TokenType
    tokens, scores, types = [], [], []
    for i in range(cfg.vocab_size):
        if i >= sp.get_piece_size():  # a vocabulary padded past the tokenizer (convert's [PAD] entries)
            tokens.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            types.append(T.UNUSED)
            continue
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        types.append(T.UNKNOWN if sp.is_unknown(i) else T.CONTROL if sp.is_control(i) else T.UNUSED if sp.is_unused(i)
                     else T.BYTE if sp.is_byte(i) else T.NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = tok.special
    writer.add_bos_token_id(special.get("bos", cfg.bos_token_id))
    writer.add_eos_token_id(special.get("eos", cfg.eos_token_id))
    if "unk" in special:
        writer.add_unk_token_id(special["unk"])
    writer.add_pad_token_id(special.get("pad", cfg.pad_token_id))
    writer.add_add_bos_token(True)  # as tokenizer_config.json says: documents start with bos
    writer.add_add_eos_token(False)
    template = chat_template_of(checkpoint)
    if template:
        writer.add_chat_template(template)

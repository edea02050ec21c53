"""Pretrain a Llama-style model on token shards; the output is a checkpoint transformers loads as it is.

Input: a tokenize artifact (train split, and val split for validation loss and bits per byte).
Output: model.safetensors + config.json (HF LlamaConfig) + the tokenizer files at the artifact
root, so `AutoModelForCausalLM.from_pretrained(out)` and `AutoTokenizer.from_pretrained(out)` work;
checkpoints/step-N/ (the last keep_last, with AdamW state, for resume), metrics.jsonl, loss.png.
A killed run re-run with the same params resumes from its newest checkpoint. Under torchrun
(nproc_per_node > 1, or Slurm) it trains with DDP, or with FSDP2 (parallel = "fsdp": each rank holds 1/N of the
weights, gradients and AdamW moments; checkpoints and output are the same files); batch_tokens is the global batch.
objective = "mlm" pre-trains an encoder instead (llmpipe/train/mlm.py): BERT's masks seeded by (seed, step, rank),
loss and validation accuracy on the masked tokens, the unigram baseline beside them; exported as ModernBertForMaskedLM
(AutoModelForMaskedLM) with norm = "layernorm" and mlp = "geglu".

    llmpipe pretrain --input runs/pretrain/tokens --tokenizer runs/pretrain/tokenizer --output runs/model --max-steps 50
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmpipe.registry import Plan, Stage
from llmpipe.train.trackers import check_tracker_names, check_trackers_installed, trackers_field

MODEL_PRESETS = ("tiny", "small", "124m", "350m")  # the keys of llmpipe.model.PRESETS (importing it would import torch)
# Params passed to ModelConfig under the same names (llmpipe/model.py has what each does)
MODEL_OPTIONS = ("positions", "rope_scaling", "rope_factor", "rope_original_max_seq_len", "sliding_window", "global_every",
                 "attn_softcap", "final_softcap", "mlp", "norm", "n_experts", "experts_per_token", "router_aux_loss_coef", "capacity_factor")
ENCODER = {"causal": False, "embed_norm": True, "mlm_head": True}  # objective mlm: the encoder's layout (llmpipe/encoder.py)


@dataclass(frozen=True)
class Params:
    tokenizer: str = field(default="", metadata={"help": "Tokenizer artifact the tokens were made with; copied into the checkpoint so transformers loads it."})
    model: str = field(default="tiny", metadata={"help": "Size preset: tiny (~1M), small (~10M), 124m, 350m; n_layer etc. override it."})
    n_layer: int = field(default=0, metadata={"help": "Transformer blocks (0: the preset's)."})
    n_embd: int = field(default=0, metadata={"help": "Hidden size (0: the preset's)."})
    n_head: int = field(default=0, metadata={"help": "Attention heads (0: the preset's)."})
    n_kv_head: int = field(default=0, metadata={"help": "Key/value heads for grouped-query attention (0: the preset's)."})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base frequency."})
    positions: Literal["rope", "alibi", "learned"] = field(default="rope", metadata={"help": "Positions: rope; alibi (per-head linear distance biases, Press et al. 2022; no transformers export); learned (GPT-2's absolute embeddings; no transformers export, no evaluation past seq_len)."})
    rope_scaling: Literal["none", "linear", "dynamic", "yarn"] = field(default="none", metadata={"help": "RoPE scaled for rope_factor x the context trained at: linear (position interpolation), dynamic (NTK) or yarn; exported as the Llama config's rope_parameters."})
    rope_factor: float = field(default=1.0, metadata={"help": "With rope_scaling: the context multiple (> 1)."})
    rope_original_max_seq_len: int = field(default=0, metadata={"help": "With rope_scaling dynamic or yarn: the context the model was trained at (0: seq_len / rope_factor)."})
    sliding_window: int = field(default=0, metadata={"help": "Each position attends to itself and the sliding_window - 1 before it (Mistral; 0: to all before it)."})
    global_every: int = field(default=0, metadata={"help": "With sliding_window: every n-th layer attends to all positions (Gemma 2: 2; exported as Ministral)."})
    attn_softcap: float = field(default=0.0, metadata={"help": "Soft-cap attention scores to (-cap, cap) with tanh (Gemma 2: 50; 0: off; no transformers export)."})
    final_softcap: float = field(default=0.0, metadata={"help": "Soft-cap the output logits likewise (Gemma 2: 30; 0: off; no transformers export)."})
    mlp: Literal["swiglu", "gelu", "geglu"] = field(default="swiglu", metadata={"help": "FFN: swiglu (Llama), gelu (GPT-2's two-matrix MLP; exported as Arcee) or geglu (the gate through GELU: ModernBERT's)."})
    norm: Literal["rmsnorm", "layernorm"] = field(default="rmsnorm", metadata={"help": "Norm: rmsnorm (Llama) or layernorm (without a bias: ModernBERT's)."})
    objective: Literal["clm", "mlm"] = field(default="clm", metadata={"help": "clm: next-token prediction (a causal LM); mlm: BERT's masked LM (15% of tokens, 80/10/10) with bidirectional attention, an embedding norm and a prediction head; with norm layernorm and mlp geglu it exports as ModernBertForMaskedLM. Needs a tokenizer with a mask token (train-tokenizer mask_token = true)."})
    n_experts: int = field(default=0, metadata={"help": "Mixture of experts: this many MLPs per layer, each token routed to experts_per_token of them (exported as Mixtral; 0: one dense MLP)."})
    experts_per_token: int = field(default=2, metadata={"help": "With n_experts: the top k experts each token goes to (Mixtral: 2 of 8)."})
    router_aux_loss_coef: float = field(default=0.01, metadata={"help": "With n_experts: weight of the load-balancing loss (Switch: 0.01); metrics.jsonl logs it and each expert's load."})
    capacity_factor: float = field(default=0.0, metadata={"help": "With n_experts, in training: an expert takes at most ceil(c x tokens x k / n_experts) tokens of a micro-batch, the rest skip it (0: dropless; evaluation and export always are)."})
    tie_embeddings: bool = field(default=True, metadata={"help": "Share the input embedding with lm_head (saves vocab x n_embd parameters)."})
    seq_len: int = field(default=256, metadata={"help": "Tokens per training sequence (also the model's max_position_embeddings)."})
    batch_tokens: int = field(default=4096, metadata={"help": "Tokens per optimizer step over all ranks; grad accumulation makes up the rest."})
    micro_batch: int = field(default=8, metadata={"help": "Sequences per forward/backward on one rank."})
    lr: float = field(default=3e-3, metadata={"help": "Peak learning rate (small models take large rates; nanoGPT's baby shakespeare uses 1e-3)."})
    min_lr: float = field(default=3e-4, metadata={"help": "Learning rate at the end of the schedule."})
    warmup_steps: int = field(default=20, metadata={"help": "Linear warmup steps."})
    schedule: str = field(default="cosine", metadata={"help": "cosine, or wsd (warmup-stable-decay, decay over the last 20%)."})
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps to train."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay on matrices (not on norms)."})
    grad_clip: float = field(default=1.0, metadata={"help": "Clip the global gradient norm to this (0: no clipping)."})
    seed: int = field(default=0, metadata={"help": "Seed of the initial weights and of the batch order."})
    eval_every: int = field(default=50, metadata={"help": "Steps between validation evaluations (0: only at the end)."})
    eval_steps: int = field(default=8, metadata={"help": "Validation batches (of micro_batch x seq_len per rank) per evaluation."})
    checkpoint_every: int = field(default=50, metadata={"help": "Steps between checkpoints (0: only at the end)."})
    keep_last: int = field(default=2, metadata={"help": "Checkpoints kept under checkpoints/ (older ones are deleted)."})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model: ~1.15x eager tokens/s on this 2-core CPU at 0.8M params, after a slow first step (compilation); pays off on long runs."})
    activation_checkpointing: bool = field(default=False, metadata={"help": "Recompute each block's activations in backward to save memory."})
    nproc_per_node: int = field(default=1, metadata={"help": "Training processes per node (torchrun, DDP); 1 trains in this process."})
    parallel: Literal["ddp", "fsdp"] = field(default="ddp", metadata={"help": "With more than one rank: ddp (a full replica per rank) or fsdp (FSDP2: weights, gradients and optimizer state sharded over the ranks)."})
    device: Literal["auto", "cpu", "cuda", "mps"] = field(default="auto", metadata={"help": "Where to train: auto (cuda, else mps, else cpu), cpu, cuda or mps."})
    trackers: tuple[str, ...] = trackers_field()

    def __post_init__(self):
        check_tracker_names(self.trackers)
        if self.model not in MODEL_PRESETS:
            raise ValueError(f"model: expected one of {', '.join(MODEL_PRESETS)}, got {self.model!r}")
        if self.schedule not in ("cosine", "wsd"):
            raise ValueError(f"schedule: expected cosine or wsd, got {self.schedule!r}")
        if min(self.seq_len, self.micro_batch, self.max_steps, self.nproc_per_node, self.batch_tokens) < 1:
            raise ValueError("seq_len, micro_batch, max_steps, nproc_per_node and batch_tokens: expected at least 1")
        per_pass = self.micro_batch * self.seq_len * self.nproc_per_node
        if self.batch_tokens % per_pass:
            raise ValueError(f"batch_tokens: {self.batch_tokens} is not a multiple of micro_batch x seq_len x nproc_per_node = {per_pass}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr: expected a number in [0, lr={self.lr}], got {self.min_lr}")
        if self.rope_scaling != "none" and (self.positions != "rope" or self.rope_factor <= 1):
            raise ValueError(f"rope_scaling: {self.rope_scaling} needs positions rope and rope_factor > 1 (got {self.positions}, {self.rope_factor})")
        if min(self.sliding_window, self.global_every, self.attn_softcap, self.final_softcap, self.rope_original_max_seq_len) < 0:
            raise ValueError("sliding_window, global_every, attn_softcap, final_softcap, rope_original_max_seq_len: expected >= 0")
        if self.n_experts and not 1 <= self.experts_per_token <= self.n_experts or min(self.n_experts, self.router_aux_loss_coef, self.capacity_factor) < 0:
            raise ValueError(f"n_experts, experts_per_token, router_aux_loss_coef, capacity_factor: expected >= 0 and experts_per_token "
                             f"from 1 to n_experts ({self.n_experts}), got {self.experts_per_token}")
        if self.global_every and not self.sliding_window:
            raise ValueError("global_every: alternates sliding-window and global layers; set sliding_window too")


def model_config(p: Params, vocab_size: int, special: dict):
    from llmpipe.model import ModelConfig

    sizes = {k: v for k, v in (("n_layer", p.n_layer), ("n_embd", p.n_embd), ("n_head", p.n_head), ("n_kv_head", p.n_kv_head)) if v}
    if "n_head" in sizes and "n_kv_head" not in sizes:
        sizes["n_kv_head"] = sizes["n_head"]
    options = {name: getattr(p, name) for name in MODEL_OPTIONS}
    if getattr(p, "objective", "clm") == "mlm":
        options |= ENCODER
    return ModelConfig.preset(
        p.model, vocab_size=vocab_size, max_seq_len=p.seq_len, rope_theta=p.rope_theta, tie_embeddings=p.tie_embeddings, **options,
        bos_token_id=special.get("bos", 1), eos_token_id=special.get("eos", 2), pad_token_id=special.get("pad", 3), **sizes,
    )


def plan(params: Params, inputs) -> Plan:
    from llmpipe.artifacts.checkpoint import TOKENIZER_FILES
    from llmpipe.text.tokenizer import check_tokenizer
    from llmpipe.train.dist import check_device

    if len(inputs) != 1:
        raise ValueError(f"inputs: expected one tokenize artifact, got {len(inputs)}")
    if params.tokenizer:
        check_tokenizer(params.tokenizer)
    check_device(params.device, built_only=True)
    check_trackers_installed(params.trackers)
    tokens = _made_manifest(inputs[0])
    if tokens is not None:
        _check_tokens(params, inputs[0].path, tokens)
    if tokens is not None and params.objective == "mlm":
        from llmpipe.train.mlm import mask_token_id

        mask_token_id(tokens.get("special_tokens", {}), inputs[0].path)
    files = ["model.safetensors", "config.json", "metrics.jsonl", "loss.png"]
    if params.tokenizer:
        tok = Path(params.tokenizer)
        # a tokenizer step not yet run (Slurm plans every step at submission) writes them all, as its own plan says
        files += ([f for f in TOKENIZER_FILES if (tok / f).exists()] or list(TOKENIZER_FILES)) if not tok.is_file() else ["tokenizer.model"]
    return Plan(phases=[("train", [{}])], files=files)


def _made_manifest(inp) -> dict | None:
    """The manifest of an input artifact as it will be read; None while an earlier step has yet to (re)make it."""
    from llmpipe.artifacts.layout import MANIFEST, read_json
    from llmpipe.artifacts.manifest import content_fingerprint

    path = Path(inp.path) / MANIFEST
    manifest = read_json(path) if inp.kind == "artifact" and path.is_file() else None
    return manifest if manifest and content_fingerprint(manifest) == inp.fingerprint else None


def _check_tokens(p: Params, path: str, manifest: dict) -> None:
    """Enough training tokens for one step, made with the tokenizer the checkpoint will ship."""
    from llmpipe.text.tokenizer import model_file, model_sha256

    made_with = manifest.get("tokenizer_sha256")  # tokens artifacts before version 2 do not record it
    if p.tokenizer and made_with and model_file(p.tokenizer).is_file() and model_sha256(p.tokenizer) != made_with:
        original = manifest.get("params", {}).get("tokenizer", "?")
        raise ValueError(f"tokenizer: {p.tokenizer} (sha256 {model_sha256(p.tokenizer)[:12]}) is not the tokenizer {path} was made with "
                         f"({original}, sha256 {made_with[:12]}); give that one")
    have = manifest.get("splits", {}).get("train", {}).get("tokens", 0)
    if have > p.batch_tokens:  # a step takes batch_tokens / seq_len samples of seq_len + 1 tokens
        return
    per_pass = p.micro_batch * p.seq_len * p.nproc_per_node
    fits = (have - 1) // per_pass * per_pass
    hint = (f"lower it to {fits} or less (a multiple of micro_batch x seq_len x nproc_per_node = {per_pass})" if fits > 0 else
            f"lower micro_batch or seq_len (micro_batch x seq_len x nproc_per_node = {per_pass})")
    raise ValueError(f"batch_tokens: one step of {p.batch_tokens} tokens needs {p.batch_tokens + 1} training tokens, "
                     f"but {path} holds {have}; {hint}, or tokenize more text")


def train_task(ctx, task: dict) -> dict:
    return train_on_tokens(ctx, ctx.params, next_token_loss, "pretrain")


def next_token_loss(cfg, dist, eval_fn):
    """pretrain's objective: the mean next-token cross-entropy, and no figures of its own for the manifest."""
    return (lambda m, batch: m(batch[0], batch[1])[1]), {}


def train_on_tokens(ctx, p: Params, objective, name: str) -> dict:
    """Train the model `p` describes on the input token shards to p.max_steps and write the checkpoint; the task's record.

    objective(cfg, dist, eval_fn) -> (loss_fn, metrics) brings the loss (next_token_loss, or distill's) and figures
    measured before training (eval_fn: the validation measure the student gets, or None without a val split).
    """
    import torch

    from llmpipe.artifacts.manifest import read_manifest
    from llmpipe.errors import InputError
    from llmpipe.evaluation.perplexity import loss_rows, summary, token_bytes
    from llmpipe.log import log
    from llmpipe.model import Model
    from llmpipe.train.data import PackedBatches, split_shards
    from llmpipe.artifacts.checkpoint import write_model_dir
    from llmpipe.train.dist import check_device, init_distributed, shutdown_distributed
    from llmpipe.train.fsdp import model_state
    from llmpipe.train.loop import LoopConfig, loss_png, peak_flops, train
    from llmpipe.train.optim import lr_at, make_optimizer

    tokens = Path(ctx.inputs[0].path)
    manifest = read_manifest(tokens)
    try:
        check_device(p.device)
    except ValueError as e:
        raise InputError(f"{ctx.run['step']} {e}") from None
    dist = init_distributed(p.device)
    try:
        cfg = model_config(p, manifest["vocab_size"], manifest.get("special_tokens", {}))
        torch.manual_seed(p.seed)
        model = Model(cfg).to(dist.device)
        model.activation_checkpointing = p.activation_checkpointing
        per_pass = p.micro_batch * p.seq_len * dist.world_size
        if p.batch_tokens % per_pass:
            raise ValueError(f"batch_tokens {p.batch_tokens} is not a multiple of micro_batch x seq_len x world size {dist.world_size}")
        accum = p.batch_tokens // per_pass
        data = PackedBatches.from_artifact(tokens, "train", seq_len=p.seq_len, batch_size=p.micro_batch * accum, seed=p.seed,
                                           rank=dist.rank, world_size=dist.world_size)
        masking = _masking(p, manifest, cfg, tokens, name)

        def micro_batches(step: int):
            x, y = data.batch(step, dist.device)  # [micro_batch * accum, seq_len] each
            if masking is not None:  # the masked LM: inputs with BERT's masks, labels at the masked positions only
                x, y = masking.apply(x, (step, dist.rank))
            for k in range(accum):
                yield x[k * p.micro_batch:(k + 1) * p.micro_batch], y[k * p.micro_batch:(k + 1) * p.micro_batch]

        eval_fn, baseline = None, {}  # no validation split: train loss only
        if "val" in manifest.get("splits", {}) and manifest["splits"]["val"]["tokens"] > p.seq_len * p.micro_batch * dist.world_size:
            val = PackedBatches(split_shards(tokens, "val"), seq_len=p.seq_len, batch_size=p.micro_batch, seed=0,
                                rank=dist.rank, world_size=dist.world_size, shuffle=False)
            sizes = token_bytes(p.tokenizer, cfg.vocab_size, manifest.get("bytes_per_token")) if p.tokenizer else None
            sizes = sizes.to(dist.device) if sizes is not None else None
            n_eval = min(p.eval_steps, val.steps_per_epoch)

            def eval_fn(m):
                sums = sum(loss_rows(m, *val.batch(s, dist.device), sizes).sum(0) for s in range(n_eval))  # nats, tokens, bytes
                if dist.ddp:
                    torch.distributed.all_reduce(sums)
                out = summary(sums)
                metrics = {"val_loss": out["loss"]}
                if sizes is not None and "bits_per_byte" in out:
                    metrics["val_bpb"] = out["bits_per_byte"]
                return metrics

            if masking is not None:  # masked-token loss and accuracy, and what a model without context would score
                from llmpipe.train.mlm import evaluator, unigram_baseline

                eval_fn = evaluator(val, n_eval, masking, dist)
                baseline = unigram_baseline(data.stream.read(0, min(len(data.stream), 1 << 24)), val, n_eval, masking, dist.rank)

        loss_fn, measured = objective(cfg, dist, eval_fn)
        measured = {**measured, **baseline}
        optimizer = make_optimizer(model, p.lr, p.weight_decay, device=dist.device)
        loop = LoopConfig(
            max_steps=p.max_steps, grad_clip=p.grad_clip, eval_every=p.eval_every, checkpoint_every=p.checkpoint_every,
            keep_last=p.keep_last, tokens_per_step=p.batch_tokens, flops_per_token=model.estimate_flops(p.seq_len),
            peak_flops=peak_flops(dist.device), parallel=p.parallel,
        )
        schedule = lambda step: lr_at(step, lr=p.lr, min_lr=p.min_lr, warmup_steps=p.warmup_steps, max_steps=p.max_steps, schedule=p.schedule)  # noqa: E731
        hf_config = cfg.to_hf()
        evals = train(model, optimizer, schedule, micro_batches, loss_fn, ctx.out, loop, dist, config_json=hf_config,
                      eval_fn=eval_fn, compile=p.compile, trackers=p.trackers)
        state = model_state(model)  # every rank: under FSDP the shards are gathered to rank 0
        if dist.is_main:
            if hf_config["model_type"] == "modernbert":  # ModernBERT joins q/k/v and gate/up (llmpipe/encoder.py)
                from llmpipe.encoder import to_modernbert

                state = to_modernbert(state, cfg)
            write_model_dir(ctx.out, state, hf_config, p.tokenizer)
            if cfg.export_blocker():  # trained all the same; said where the checkpoint is written
                log(f"note: {ctx.out} loads in llmpipe but not in transformers: {cfg.export_blocker()}")
            loss_png(ctx.out / "loss.png", ctx.out / "metrics.jsonl", f"{name}: {cfg.n_layer} layers, d {cfg.n_embd}, {model.num_params() / 1e6:.2f}M params")
        final = evals[-1] if evals else {}
        return {"counts": {"steps": p.max_steps, "tokens": p.max_steps * p.batch_tokens, "parameters": model.num_params()},
                "metrics": {k: round(v, 5) for k, v in {**measured, **final}.items() if k != "step"}, "world_size": dist.world_size}
    finally:
        shutdown_distributed()


def _masking(p: Params, manifest: dict, cfg, tokens: Path, name: str):
    """BERT's masking for objective mlm (llmpipe/train/mlm.py), seeded by p.seed; None for the causal LM."""
    if p.objective != "mlm":
        return None
    from llmpipe.errors import InputError
    from llmpipe.train.mlm import Masking, mask_token_id

    special = manifest.get("special_tokens", {})
    try:
        if name != "pretrain":
            raise ValueError(f"objective mlm: pretrain's; {name} trains a causal LM (objective clm)")
        mask = mask_token_id(special, str(tokens))
    except ValueError as e:
        raise InputError(f"{name} {e}") from None
    return Masking(mask, cfg.vocab_size, tuple(int(i) for i in special.values()), seed=p.seed)


def finalize(ctx, stats: dict, records: dict) -> dict:
    record = records["train"][0]["stats"]
    result = {"counts": record.get("counts", {}), "metrics": record.get("metrics", {}), "world_size": record.get("world_size", 1),
              "stats": {"counts": record.get("counts", {})}}
    if ctx.params.tokenizer and ctx.params.objective != "mlm":  # an encoder writes no text
        result["samples"] = samples(ctx.out, ctx.params.tokenizer)
    return result


def samples(checkpoint, tokenizer_path: str, prompt: str = "The", new_tokens: int = 40) -> dict:
    """A greedy and a top-p continuation of `prompt` (KV cache), logged so a run shows what it learned."""
    from llmpipe.decoding import Decoding
    from llmpipe.generate import generate, load_for_generation
    from llmpipe.log import log

    model, tok = load_for_generation(checkpoint, tokenizer_path, complete=False)
    out = {}
    for name, kwargs in (("greedy", {}), ("top_p", {"temperature": 0.8, "top_p": 0.9})):
        out[name] = generate(model, tok, prompt, Decoding(max_new_tokens=new_tokens, **kwargs)).text
        log(f"sample ({name}): {out[name]!r}")
    return out


STAGE = Stage(
    name="pretrain", version=2, params=Params, doc=__doc__, plan=plan, run_task={"train": train_task}, finalize=finalize,
    output_kind="checkpoint", launcher="torchrun", input_kinds=("tokens",), path_params=("tokenizer",),
)

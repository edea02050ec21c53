"""SFT speed: llmpipe's sft training step vs TRL's SFTTrainer on the same checkpoint, conversations and length, in one run.

Same model: a small Llama written as an llmpipe checkpoint (random weights; the vocabulary is a BPE
tokenizer trained here by `llmpipe train-tokenizer` on ../shared/data/text/c4_demo.jsonl), which
llmpipe loads with Model.from_checkpoint and transformers with LlamaForCausalLM.from_pretrained.
Same data: ../shared/data/sft/alpaca_en_demo.json rendered by llmpipe's chat template and cut to
max_seq_len + 1 tokens (stages/sft.py load_examples). TRL gets those very token ids, pre-tokenized
with `labels` (the id on assistant tokens, -100 elsewhere), in llmpipe's batch order (sequential
sampler), so step k of both is the same rows right-padded to the same width; the script checks
that TRL's batches hold the same tokens and loss targets, and that the first step's loss agrees.

Equal work: fp32 on CPU, no packing, no padding-free, gradient accumulation 1, grad clip 1.0,
fused AdamW (TRL's default optimizer on torch >= 2.8, and llmpipe's), same lr and betas, no eval,
no logging, no checkpoints, dataloader workers 0, no torch.compile (the default of both). TRL's
SFTConfig turns gradient checkpointing on by default, which recomputes the forward in the backward;
the llmpipe stage does not, so it is off here (`--trl-gradient-checkpointing` measures TRL's default).

llmpipe's step is the body of llmpipe/train/loop.py with stages/sft.py's batches and loss: set lr,
build the step's batch (step_examples + batch_tensors), forward with the masked loss, backward,
clip, AdamW, zero_grad, loss.item(). TRL's step is everything its Trainer does between two steps
(batch fetch and collate, its fused LM-head loss and token metrics, clip, AdamW, scheduler).

This machine is shared and drifts, so the two take steps in turn inside one process: TRL's
training loop runs, and a TrainerCallback runs llmpipe's step k beside TRL's step k, before it on
even steps and after it on odd ones; TRL's time is its loop's time minus the callback's. Reported:
median tokens/s of each and the median over steps of the per-step ratio (with its IQR). Tokens of a
step = the conversation tokens in its rows (padding not counted), the same for both.

    nice python benchmarks/sft_speed.py                                   # 4 layers x 256 wide: ~3 min idle, ~10 min at load 8
    nice python benchmarks/sft_speed.py --n-embd 128 --steps 60   # llmpipe's "tiny" preset
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import llmpipe
from llmpipe.model import Model, ModelConfig
from llmpipe.train.memory import keep_freed_memory

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_checkpoint(work: Path, args) -> Path:
    """A random-weight llmpipe checkpoint with a 4k BPE vocabulary trained on C4 text and the chat template."""
    from llmpipe.artifacts.checkpoint import write_model_dir
    from llmpipe.text.chat_template import write_chat_template
    from llmpipe.text.tokenizer import load_tokenizer

    llmpipe.run_stage("ingest", [str(SHARED / "text" / "c4_demo.jsonl")], work / "docs")
    llmpipe.run_stage("train_tokenizer", [str(work / "docs")], work / "tok", vocab_size=args.vocab)
    special = load_tokenizer(work / "tok").special
    cfg = ModelConfig(vocab_size=args.vocab, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, n_kv_head=args.n_head,
                      max_seq_len=1024, bos_token_id=special["bos"], eos_token_id=special["eos"], pad_token_id=special["pad"])
    torch.manual_seed(0)
    write_model_dir(work / "model", Model(cfg).state_dict(), cfg.to_hf(), work / "tok")
    write_chat_template(work / "model")
    return work / "model"


def llmpipe_run(model_dir: Path, args):
    """(model, examples of each step, loss targets of each step, step function), as stages/sft.py train_task builds them."""
    from stages.sft import Params, batch_tensors, load_examples
    from llmpipe.stats import TaskStats
    from llmpipe.text.tokenizer import load_tokenizer
    from llmpipe.train.examples import step_examples
    from llmpipe.train.optim import lr_at, make_optimizer

    p = Params(checkpoint=str(model_dir), max_seq_len=args.max_seq_len, batch_size=args.batch, micro_batch=args.batch, lr=args.lr)
    torch.manual_seed(p.seed)
    model = Model.from_checkpoint(model_dir)
    tokenizer = load_tokenizer(model_dir)
    max_len = min(p.max_seq_len or model.config.max_seq_len, model.config.max_seq_len)
    train_examples, _ = load_examples([str(SHARED / "sft" / "alpaca_en_demo.json")], p, tokenizer, max_len, TaskStats())
    pad = tokenizer.special["pad"]
    steps = args.warmup + args.steps
    optimizer = make_optimizer(model, p.lr, p.weight_decay)
    model.train()

    def micro_batches(step: int):  # accumulation 1: the step's examples are one micro-batch
        yield batch_tensors(step_examples(train_examples, step, p.batch_size, p.seed), pad, "cpu")

    def step_fn(step: int) -> float:  # llmpipe/train/loop.py's step body on CPU (its autocast is a no-op there)
        lr = lr_at(step, lr=p.lr, min_lr=p.min_lr, warmup_steps=p.warmup_steps, max_steps=steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = list(micro_batches(step))
        total = torch.zeros(())
        for batch in batches:
            loss = model(batch[0], batch[1])[1] / len(batches)
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total.item()

    per_step = [step_examples(train_examples, s, p.batch_size, p.seed) for s in range(steps)]
    targets = [int((batch_tensors(rows, pad, "cpu")[1] != -1).sum()) for rows in per_step]
    return model, per_step, targets, step_fn


def clock() -> tuple[float, float]:
    """(wall, process CPU) seconds: wall time is what a user waits; CPU time discounts the moments other
    engineers' jobs held this shared machine's cores (the ratio of each is printed)."""
    return time.perf_counter(), time.process_time()


class Alternate:
    """TrainerCallback hooks: run llmpipe's step k beside TRL's step k and time both (see the module docstring)."""

    def __init__(self, llmpipe_step, warmup: int):
        self.llmpipe_step, self.warmup = llmpipe_step, warmup
        self.trl, self.llm, self.llm_loss = [], [], []  # (wall, cpu) seconds per timed step
        self.trainer, self.trl_first_loss = None, float("nan")
        self.trl_running = (0.0, 0.0)  # TRL's time in the current step so far
        self.resumed = None  # when control last went back to TRL's loop

    def _pause(self):
        now = clock()
        if self.resumed is not None:
            self.trl_running = tuple(a + n - r for a, n, r in zip(self.trl_running, now, self.resumed))

    def _llmpipe(self, step: int):
        t = clock()
        loss = self.llmpipe_step(step)
        if step >= self.warmup:
            self.llm.append(tuple(n - s for n, s in zip(clock(), t)))
        self.llm_loss.append(loss)

    def on_train_begin(self, args, state, control, **kw):
        self.resumed = clock()

    def on_step_begin(self, args, state, control, **kw):
        self._pause()
        if state.global_step % 2 == 0:  # llmpipe first on even steps
            self._llmpipe(state.global_step)
        self.resumed = clock()

    def on_step_end(self, args, state, control, **kw):
        self._pause()
        step = state.global_step - 1  # the step TRL just took
        if step == 0 and self.trainer is not None:  # its running loss sum (logging is off, so it holds step 0's loss)
            self.trl_first_loss = float(self.trainer._tr_loss)
        if step >= self.warmup:
            self.trl.append(self.trl_running)
        self.trl_running = (0.0, 0.0)
        if step % 2 == 1:
            self._llmpipe(step)
        self.resumed = clock()


def trl_trainer(model_dir: Path, per_step: list, work: Path, args, alternate: Alternate):
    import datasets
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    rows = [row for step in per_step for row in step]  # llmpipe's batch order; the sampler keeps it
    data = Dataset.from_dict({"input_ids": [ids for ids, _ in rows],
                              "labels": [[t if m else -100 for t, m in zip(ids, mask)] for ids, mask in rows]})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    seen = []  # (tokens, loss targets) of each batch TRL's collator made

    class Counting(DataCollatorForLanguageModeling):  # TRL's own collator, counting what it hands the model
        def torch_call(self, examples):
            out = super().torch_call(examples)
            seen.append((int(out["attention_mask"].sum()), int((out["labels"][:, 1:] != -100).sum())))
            return out

    class Callback(TrainerCallback):
        on_train_begin, on_step_begin, on_step_end = alternate.on_train_begin, alternate.on_step_begin, alternate.on_step_end

    config = SFTConfig(
        output_dir=str(work / "trl"), max_steps=len(per_step), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        learning_rate=args.lr, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0, max_length=args.max_seq_len + 1,
        packing=False, padding_free=False, bf16=False, fp16=False, activation_checkpointing=args.trl_gradient_checkpointing,
        train_sampling_strategy="sequential", eval_strategy="no", logging_strategy="no", save_strategy="no", report_to="none",
        dataloader_num_workers=0, dataloader_pin_memory=False, disable_tqdm=True, seed=0, use_cpu=True,
    )
    collator = Counting(pad_token_id=tokenizer.pad_token_id)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, data_collator=collator,
                         callbacks=[Callback()])
    trainer.remove_callback(PrinterCallback)  # its end-of-training metrics line; logging is off
    alternate.trainer = trainer
    versions = f"transformers {transformers.__version__}, trl {__import__('trl').__version__}, optimizer {getattr(config.optim, 'value', config.optim)}"
    return trainer, seen, versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--max-seq-len", type=int, default=512, help="sft's max_seq_len: each conversation is cut to this + 1 tokens")
    ap.add_argument("--batch", type=int, default=8, help="conversations per optimizer step (one micro-batch)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--steps", type=int, default=30, help="timed steps of each, taken in turn")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first steps of each")
    ap.add_argument("--trl-gradient-checkpointing", action="store_true", help="TRL's SFTConfig default (recomputes the forward)")
    ap.add_argument("--glibc-default-malloc", action="store_true", help="skip llmpipe's malloc setting (it applies to both)")
    args = ap.parse_args()
    # llmpipe's training loop keeps freed memory (llmpipe/train/memory.py); in one process it applies to TRL too
    malloc = "glibc defaults" if args.glibc_default_malloc else f"freed memory kept: {keep_freed_memory()}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = make_checkpoint(work, args)
        model, per_step, targets, step_fn = llmpipe_run(model_dir, args)
        alternate = Alternate(step_fn, args.warmup)
        trainer, seen, versions = trl_trainer(model_dir, per_step, work, args, alternate)
        t = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t

    tokens = [sum(len(ids) for ids, _ in rows) for rows in per_step]
    widths = [min(args.max_seq_len + 1, max(len(ids) for ids, _ in rows)) for rows in per_step]
    if [s[0] for s in seen] != tokens or [s[1] for s in seen] != targets:
        raise SystemExit(f"TRL's batches differ from llmpipe's: tokens {[s[0] for s in seen][:5]} vs {tokens[:5]}, "
                         f"targets {[s[1] for s in seen][:5]} vs {targets[:5]}")
    timed = tokens[args.warmup:]
    trl_name = "TRL SFTTrainer" + (" (gradient checkpointing)" if args.trl_gradient_checkpointing else "")
    runs = {"llmpipe sft (eager CPU, cpu_ops blocks)": alternate.llm, trl_name: alternate.trl}
    params = sum(p.numel() for p in model.parameters())
    print(f"\nmodel: Llama {args.n_layer} layers x {args.n_embd} (heads {args.n_head}), vocab {args.vocab}, {params / 1e6:.2f}M parameters (tied); "
          f"data: alpaca_en_demo.json, {len(per_step[0])} conversations/step cut to {args.max_seq_len + 1} tokens, "
          f"{statistics.mean(tokens):.0f} tokens/step on average, padded to {statistics.mean(widths):.0f} wide "
          f"({1 - statistics.mean(tokens) / (args.batch * statistics.mean(widths)):.0%} padding)")
    print(f"{args.steps} timed steps each after {args.warmup} warm-up, in turn; threads {torch.get_num_threads()}, malloc {malloc}; "
          f"torch {torch.__version__}, {versions}; wall {wall:.0f}s")
    print(f"same batches: yes (tokens and loss targets of all {len(seen)} steps equal); first-step loss: llmpipe {alternate.llm_loss[0]:.5f}, "
          f"TRL {alternate.trl_first_loss:.5f}")

    def rate(times, k):  # k: 0 wall, 1 CPU
        return f"{statistics.median(n / t[k] for n, t in zip(timed, times)):,.0f}"

    def vs_trl(k):  # step i of both holds the same rows, so the ratio of times is the ratio of tokens/s
        q1, q2, q3 = statistics.quantiles([trl[k] / llm[k] for llm, trl in zip(alternate.llm, alternate.trl)], n=4)
        return f"{q2:.3f}x ({q1:.3f}-{q3:.3f})"

    print("\n| trainer | tokens/s (median) | step ms (median) | vs TRL: median per-step ratio (IQR) | tokens per CPU-s (median) | vs TRL per CPU-s (IQR) |")
    print("|---|---|---|---|---|---|")
    for name, times in runs.items():
        ms = statistics.median(t[0] for t in times) * 1000
        mine = times is alternate.llm
        print(f"| {name} | {rate(times, 0)} | {ms:.0f} | {vs_trl(0) if mine else '1'} | {rate(times, 1)} | {vs_trl(1) if mine else '1'} |")


if __name__ == "__main__":
    main()

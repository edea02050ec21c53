"""Tokenizer training time and tokenize throughput, beside sentencepiece and Hugging Face tokenizers.

Reads the text in ../shared/data/text (C4, Dolma, Gutenberg, Wikipedia, Shakespeare; about 10 MB,
cut into documents of at most ~4 kB), makes four document parts, then in one run:
- trains 8k and 32k BPE vocabularies with `llmpipe train-tokenizer`, with sentencepiece's own
  trainer on the very same sentences and options, and with tokenizers' SentencePieceBPETokenizer;
- tokenizes with `llmpipe tokenize` at 1 and 2 workers, and encodes the same documents with one
  sentencepiece `encode(list)` call and one tokenizers `encode_batch` call (same 32k model).

MB are of UTF-8 text. "MB per CPU-s" is text over this process's CPU time (all its threads): the
per-core figure. llmpipe's is measured at 1 worker, where tasks run in this process (at 2 workers
they run in a process pool, so only wall time is shown). Best of --repeat runs. The machine is
shared: compare the figures of one run, not absolute ones.

    nice python benchmarks/tokenize_speed.py [--repeat 2] [--copies 1]     # about 2.5 minutes on 2 busy cores
"""

import os
import sys

# Run as a script, this file's folder comes first on sys.path and its name would shadow the standard
# library's `tokenize` (which inspect, linecache and tracebacks import): take the folder off.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import gzip  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"


def documents(copies: int) -> list[dict]:
    texts = [json.loads(line)["text"] for line in (DATA / "c4_demo.jsonl").read_text().splitlines()]
    for f in sorted((DATA / "dolma").glob("*.jsonl.gz")):
        texts += [json.loads(line)["text"] for line in gzip.open(f, "rt")]
    for f in [*sorted((DATA / "gutenberg").glob("*.txt")), DATA / "wiki_demo.txt", DATA / "tinyshakespeare.txt", *sorted((DATA / "wikitext-2").glob("*.txt"))]:
        chunk = ""
        for para in f.read_text(encoding="utf-8").split("\n\n"):  # books become web-page-sized documents
            chunk = f"{chunk}\n\n{para}" if chunk else para
            if len(chunk) > 4000:
                texts.append(chunk)
                chunk = ""
        texts += [chunk] if chunk.strip() else []
    return [{"id": f"{c}-{i}", "text": t} for c in range(copies) for i, t in enumerate(texts) if t.strip()]


def best(fn, repeat: int):
    """(result, wall seconds, CPU seconds) of the fastest of `repeat` calls."""
    runs = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        runs.append((time.perf_counter() - t0, time.process_time() - c0, out))
    wall, cpu, out = min(runs, key=lambda r: r[0])
    return out, wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--copies", type=int, default=1, help="repeat the corpus (new ids) for steadier throughput figures")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"data not found: {DATA} (the shared data folder sits beside the repository)")
    import sentencepiece as spm
    from tokenizers import SentencePieceBPETokenizer, Tokenizer

    import llmpipe
    from stages.train_tokenizer import _sentences
    from llmpipe.text.tokenizer import CHAT_ROLES, SPECIAL_TOKENS

    docs = documents(args.copies)
    texts = [d["text"] for d in docs]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    tmp = Path(tempfile.mkdtemp(prefix="llmpipe-bench-tok-"))
    for k in range(4):
        (tmp / "raw").mkdir(exist_ok=True)
        (tmp / "raw" / f"p{k}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[k::4]))
    llmpipe.run_stage("ingest", [str(tmp / "raw")], tmp / "docs", workers=2)
    sentences = [s for t in texts for s in _sentences(t, 4192)]
    print(f"\ncorpus: {len(docs)} documents, {mb:.1f} MB, {len(sentences)} lines; repeat {args.repeat}, best run\n")

    rows = [("task", "tool", "wall s", "MB/s", "MB per CPU-s")]
    for vocab in (8000, 32000):
        run = lambda v=vocab: llmpipe.run_stage("stages.train_tokenizer", [str(tmp / "docs")], tmp / f"tok{v}", force=True, vocab_size=v, holdout_documents=0)  # noqa: E731
        _, wall, _ = best(run, args.repeat)
        rows.append((f"train {vocab // 1000}k BPE", "llmpipe train-tokenizer (threads=4)", f"{wall:.1f}", "", ""))

        def raw(v=vocab):
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences), model_writer=io.BytesIO(), model_type="bpe", vocab_size=v, byte_fallback=True,
                character_coverage=0.9995, normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
                allow_whitespace_only_pieces=True, input_sentence_size=0, num_threads=4, minloglevel=2, unk_id=0, bos_id=1, eos_id=2,
                pad_id=3, control_symbols=[SPECIAL_TOKENS[r] for r in CHAT_ROLES])
        _, wall, _ = best(raw, args.repeat)
        rows.append(("", "sentencepiece trainer, same sentences", f"{wall:.1f}", "", ""))
        hf_train = lambda v=vocab: SentencePieceBPETokenizer().train_from_iterator(sentences, vocab_size=v, show_progress=False)  # noqa: E731
        _, wall, _ = best(hf_train, args.repeat)
        rows.append(("", "tokenizers SentencePieceBPETokenizer", f"{wall:.1f}", "", ""))

    tok_dir = tmp / "tok32000"
    for workers in (1, 2):
        run = lambda w=workers: llmpipe.run_stage("stages.tokenize", [str(tmp / "docs")], tmp / f"tokens{w}", force=True, workers=w, tokenizer=str(tok_dir))  # noqa: E731
        _, wall, cpu = best(run, args.repeat)
        per_cpu = f"{mb / cpu:.2f}" if workers == 1 else ""  # tasks run in this process only with 1 worker
        rows.append(("tokenize (32k)", f"llmpipe tokenize, {workers} worker{'s' * (workers > 1)}", f"{wall:.2f}", f"{mb / wall:.2f}", per_cpu))
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    for threads in (1, 2):
        _, wall, cpu = best(lambda t=threads: sp.encode(texts, return_type="numpy", num_threads=t), args.repeat)
        rows.append(("", f"sentencepiece encode(list), {threads} thread{'s' * (threads > 1)}", f"{wall:.2f}", f"{mb / wall:.2f}", f"{mb / cpu:.2f}"))
    hf = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    hf.encode_special_tokens = True
    _, wall, cpu = best(lambda: hf.encode_batch(texts, add_special_tokens=False), args.repeat)
    rows.append(("", "tokenizers encode_batch (all cores)", f"{wall:.2f}", f"{mb / wall:.2f}", f"{mb / cpu:.2f}"))

    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for k, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print(f"\nartifacts in {tmp} (delete when done)")


if __name__ == "__main__":
    main()

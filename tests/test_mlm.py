"""Masked language modelling (llmpipe/train/mlm.py, pretrain objective "mlm"): BERT's 15 % masking with 80/10/10
replacement, bidirectional attention, the export as transformers' ModernBertForMaskedLM with equal logits, and an
encoder pre-trained on the quickstart corpus that predicts held-out masked tokens far better than the unigram baseline."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import run_cli
from tests.test_model import shakespeare_ids
from tests.test_model_options import trained_looking as moved_off_init

torch = pytest.importorskip("torch")

from llmpipe.model import Model, ModelConfig  # noqa: E402
from llmpipe.train.mlm import Masking  # noqa: E402

ENCODER = {"norm": "layernorm", "mlp": "geglu", "embed_norm": True, "causal": False, "mlm_head": True}
BASE = {"vocab_size": 260, "n_layer": 3, "n_embd": 64, "n_head": 4, "n_kv_head": 4, "max_seq_len": 256, "rope_theta": 5000.0}
MASK, SPECIAL = 256, (1, 2, 3)  # byte ids 0-255 are the text; bos/eos/pad and the mask above or below them


def trained_looking(**options) -> Model:
    return moved_off_init(BASE, **options)


def test_masking_selects_15_percent_and_replaces_80_10_10(shared_data):
    """64 rows of 512 bytes of real text with a bos opening each row: about 15 % of the ordinary tokens are selected, of
    them about 80 % become the mask, 10 % a random ordinary token, 10 % stay; bos is never selected; labels are the
    original tokens at the selected positions and -1 elsewhere; the same key gives the same masks, another key others."""
    text = (shared_data / "text" / "tinyshakespeare.txt").read_bytes()[:64 * 512]
    tokens = torch.tensor(list(text), dtype=torch.long).view(64, 512)
    tokens[:, 0] = 1  # bos
    masking = Masking(MASK, 260, SPECIAL, seed=7)
    inputs, labels = masking.apply(tokens, (3, 0))
    selected = labels != -1
    ordinary = tokens != 1
    masked = selected & (inputs == MASK)
    kept = selected & (inputs == tokens)
    randomised = selected & (inputs != MASK) & (inputs != tokens)
    n = int(selected.sum())
    shares = (n / int(ordinary.sum()), int(masked.sum()) / n, int(randomised.sum()) / n, int(kept.sum()) / n)
    print(f"selected {shares[0]:.4f} of {int(ordinary.sum())} tokens; of them mask {shares[1]:.4f}, random {shares[2]:.4f}, kept {shares[3]:.4f}")
    # 32,704 ordinary tokens: the selected share's standard error is 0.002, the 80/10/10 shares' (of ~4,900) under 0.006
    assert shares[0] == pytest.approx(0.15, abs=0.01)
    assert shares[1] == pytest.approx(0.8, abs=0.025) and shares[2] == pytest.approx(0.1, abs=0.02) and shares[3] == pytest.approx(0.1, abs=0.02)
    assert not selected[:, 0].any() and torch.equal(inputs[:, 0], tokens[:, 0])  # bos stays, unscored
    assert torch.equal(labels[selected], tokens[selected]) and torch.equal(inputs[~selected], tokens[~selected])
    replacements = inputs[randomised]
    assert not torch.isin(replacements, torch.tensor([*SPECIAL, MASK])).any() and replacements.unique().numel() > 100
    again = masking.apply(tokens, (3, 0))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)  # a resumed run masks step 3 the same
    for other in (masking.apply(tokens, (4, 0)), masking.apply(tokens, (3, 1)), Masking(MASK, 260, SPECIAL, seed=8).apply(tokens, (3, 0))):
        assert (other[1] != labels).float().mean() > 0.1


def test_the_encoder_attends_both_ways_and_the_causal_model_only_back():
    """Changing token 30 changes the encoder's output at position 10 (it sees later tokens) and not the causal model's;
    both see an earlier token."""
    x = torch.randint(4, 256, (1, 48))
    for options, sees_later in ((ENCODER, True), ({}, False)):
        model = trained_looking(**options)
        for position, influences in ((30, sees_later), (5, True)):
            changed = x.clone()
            changed[0, position] = (x[0, position] + 1) % 256
            with torch.no_grad():
                same = torch.equal(model(x)[0][0, 10], model(changed)[0][0, 10])
            assert same != influences, (options, position)


def test_encoder_options_leave_the_fused_cpu_block():
    """cpu_ops.block computes RMSNorm, causal attention and SwiGLU: an encoder option inside the blocks takes the plain
    formulas; the MLM head sits after the blocks, which stay fused, with the same logits as the plain formulas."""
    import llmpipe.model as model_module

    assert ModelConfig(**BASE).fusable and ModelConfig(**BASE, mlm_head=True).fusable
    for option in ("norm", "mlp", "embed_norm", "causal"):
        assert not ModelConfig(**{**BASE, option: ENCODER[option]}).fusable, option
    model, x = trained_looking(mlm_head=True), torch.randint(4, 256, (2, 48))
    with torch.no_grad():
        fused = model(x)[0]
        model_module.CPU_OPS = False
        try:
            plain = model(x)[0]
        finally:
            model_module.CPU_OPS = True
    assert (fused - plain).abs().max().item() < 1e-4


@pytest.mark.parametrize("tie", [True, False])
def test_the_encoder_exports_as_modernbert_with_transformers_logits(tmp_path, shared_data, tie):
    transformers = pytest.importorskip("transformers")
    from llmpipe.artifacts.checkpoint import write_model_dir
    from llmpipe.encoder import to_modernbert
    from llmpipe.errors import InputError

    model = trained_looking(**ENCODER, tie_embeddings=tie)
    cfg = model.config
    assert cfg.export_blocker() == ""
    write_model_dir(tmp_path / "ck", to_modernbert(model.state_dict(), cfg), cfg.to_hf())
    x = shakespeare_ids(shared_data, 400)  # [2, 200]
    with torch.no_grad():
        ours = model(x)[0]
        for attention in ("eager", "sdpa"):
            hf, info = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "ck", attn_implementation=attention, output_loading_info=True)
            assert type(hf).__name__ == "ModernBertForMaskedLM" and not any(info.values()), info  # every weight read, none left over
            difference = (ours - hf.eval()(x).logits).abs().max().item()
            print(f"tie {tie} {attention}: max |logit difference| {difference:.2e}")
            assert difference < 1e-5
    # llmpipe reads the export back (ModernBERT's names split again), also without its own config entry
    assert torch.equal(Model.from_checkpoint(tmp_path / "ck", encoder=True)(x)[0], ours)
    hf_config = {k: v for k, v in json.loads((tmp_path / "ck" / "config.json").read_text()).items() if k != "llmpipe"}
    assert ModelConfig.from_hf(hf_config) == cfg
    with pytest.raises(InputError, match="masked-LM encoder .* cannot generate"):  # generation, evaluation, fine-tuning
        Model.from_checkpoint(tmp_path / "ck")


@pytest.mark.parametrize("options, said", [
    ({**ENCODER, "norm": "rmsnorm"}, "norm = 'rmsnorm'"),
    ({**ENCODER, "mlp": "swiglu"}, "mlp = 'swiglu'"),
    ({**ENCODER, "n_kv_head": 2}, "grouped-query"),
    ({**ENCODER, "positions": "alibi"}, "ALiBi"),
    ({"norm": "layernorm"}, "a causal LM with LayerNorm"),
])
def test_an_encoder_transformers_cannot_compute_says_why_in_one_line(tmp_path, options, said):
    transformers = pytest.importorskip("transformers")
    from llmpipe.artifacts.checkpoint import save_checkpoint

    cfg = ModelConfig(**{**BASE, **options})
    reason = cfg.export_blocker()
    assert said in reason and "\n" not in reason, reason
    assert cfg.to_hf()["model_type"] == "llmpipe"
    save_checkpoint(tmp_path / "ck", Model(cfg).state_dict(), cfg.to_hf())
    with pytest.raises(ValueError, match="llmpipe"):
        transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "ck")
    assert Model.from_checkpoint(tmp_path / "ck", encoder=True).config == cfg


# ------------------------------------------------------------------ pre-training on the quickstart corpus

ENCODER_FLAGS = ["--objective", "mlm", "--norm", "layernorm", "--mlp", "geglu", "--n-layer", "2", "--n-embd", "128", "--n-head", "4",
                 "--n-kv-head", "4", "--seq-len", "64", "--micro-batch", "32", "--batch-tokens", "2048", "--warmup-steps", "10",
                 "--eval-steps", "4", "--device", "cpu"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The quickstart's text (Python's documentation, embedded: no download), a 2048-piece tokenizer with the mask token,
    and its token shards with a 5 % validation split (~10 s)."""
    import llmpipe

    tmp = tmp_path_factory.mktemp("mlm_corpus")
    llmpipe.run_stage("ingest", ["embedded:python-docs", "embedded:stdlib-docstrings"], tmp / "docs", min_chars=200)
    llmpipe.run_stage("train_tokenizer", [str(tmp / "docs")], tmp / "tok", vocab_size=2048, holdout_documents=20, mask_token=True)
    llmpipe.run_stage("tokenize", [str(tmp / "docs")], tmp / "tokens", tokenizer=str(tmp / "tok"), val_fraction=0.05)
    return tmp


def pretrain_encoder(corpus, out: str, steps: int, seed: int = 0):
    run_cli("pretrain", "--input", "tokens", "--tokenizer", "tok", "--output", out, "--max-steps", str(steps), "--seed", str(seed),
            "--eval-every", str(steps), "--checkpoint-every", str(steps), *ENCODER_FLAGS, cwd=corpus, check=True, env=ONE_THREAD,
            timeout=1800)
    return json.loads((corpus / out / "_manifest.json").read_text())["metrics"]


def test_pretrain_mlm_learns_and_exports(corpus):
    """A quick run (30 steps): loss well below a uniform guess, the checkpoint a ModernBertForMaskedLM predicting the same
    tokens, and the stages that need a causal LM (generate, evaluate, sft) refuse it in one line."""
    import llmpipe
    from llmpipe.errors import UserError

    transformers = pytest.importorskip("transformers")
    metrics = pretrain_encoder(corpus, "quick", 30)
    print(metrics)
    # 30 steps learn the unigram distribution and little context yet (the long test below shows the context learned)
    assert metrics["val_mlm_acc"] > metrics["val_unigram_acc"] - 0.01 and metrics["val_loss"] < 0.9 * math.log(2048)
    _exports_predict_the_same_tokens(corpus / "quick", corpus / "tokens", transformers)
    res = run_cli("generate", "quick", "--prompt", "The", cwd=corpus)
    assert res.returncode == 2 and res.stderr.strip().startswith("error: generate: ") and "masked-LM encoder" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    for stage, inputs, params in (("evaluate", ["quick", "tokens"], {}), ("sft", ["embedded:python-qa"], {"checkpoint": str(corpus / "quick")})):
        with pytest.raises(UserError, match="masked-LM encoder") as refused:
            llmpipe.run_stage(stage, [str(corpus / i) if "embedded" not in i else i for i in inputs], corpus / stage, **params)
        assert "\n" not in str(refused.value) and not (corpus / stage).exists(), refused.value


def _exports_predict_the_same_tokens(checkpoint, tokens, transformers):
    from llmpipe.train.data import PackedBatches, split_shards

    special = json.loads((tokens / "_manifest.json").read_text())["special_tokens"]
    val = PackedBatches(split_shards(tokens, "val"), seq_len=64, batch_size=16, shuffle=False)
    inputs, labels = Masking(special["mask"], 2048, tuple(special.values()), seed=0).apply(val.batch(0)[0], (0, 0))
    ours = Model.from_checkpoint(checkpoint, encoder=True).eval()
    hf = transformers.AutoModelForMaskedLM.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        a, b = ours(inputs)[0], hf(inputs).logits
    scored = labels != -1
    assert (a - b).abs().max().item() < 1e-4
    assert torch.equal(a[scored].argmax(-1), b[scored].argmax(-1))


def test_pretrain_mlm_needs_a_tokenizer_with_a_mask_token(corpus):
    import llmpipe

    llmpipe.run_stage("train_tokenizer", [str(corpus / "docs")], corpus / "tok_plain", vocab_size=2048, holdout_documents=20)
    llmpipe.run_stage("tokenize", [str(corpus / "docs")], corpus / "tokens_plain", tokenizer=str(corpus / "tok_plain"), val_fraction=0.05)
    res = run_cli("pretrain", "--input", "tokens_plain", "--output", "nomask", "--max-steps", "2", *ENCODER_FLAGS, cwd=corpus)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and not (corpus / "nomask").exists(), res.stderr
    assert "has no mask token; train the tokenizer with mask_token = true" in lines[0], lines[0]


@pytest.mark.long  # 800 steps: ~8 min per seed with three seeds side by side on 2 shared cores
# seeds 0, 1, 2 reached 0.215, 0.201, 0.245 against 0.083 (most frequent token) and 0.0105 (sampled): asserted at 1.8x and 10x
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_encoder_pretrained_on_the_quickstart_corpus_predicts_masked_tokens_far_above_the_unigram_baseline(corpus, seed):
    transformers = pytest.importorskip("transformers")
    metrics = pretrain_encoder(corpus, f"seed{seed}", 800, seed)
    print(f"seed {seed}: held-out masked-token accuracy {metrics['val_mlm_acc']:.4f}, loss {metrics['val_loss']:.3f}; unigram "
          f"baseline: most frequent token {metrics['val_unigram_acc']:.4f}, sampled {metrics['val_unigram_sample_acc']:.4f}")
    assert metrics["val_mlm_acc"] > 1.8 * metrics["val_unigram_acc"] and metrics["val_mlm_acc"] > 10 * metrics["val_unigram_sample_acc"]
    _exports_predict_the_same_tokens(corpus / f"seed{seed}", corpus / "tokens", transformers)

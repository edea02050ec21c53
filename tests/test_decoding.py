"""Decoding (llmpipe/decoding.py, llmpipe/generate.py, `llmpipe generate`): greedy, sampling and beam search give
transformers' generate() tokens on the same checkpoint, token for token (a batch of prompts of different lengths,
left-padded on both sides); top-k, top-p, min-p and the repetition penalty keep exactly the tokens their definitions
say on hand-made scores; stop strings, prompt files and user mistakes as a user meets them."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.test_errors import _one_line_error

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="transformers is the peer generate() is compared with")

from llmpipe.decoding import (  # noqa: E402  (after the skips: it imports torch)
    Decoding, beam_search, keep_min_p, keep_top_k, keep_top_p, penalize_repetition, token_steps,
)

PAD = 3


@pytest.fixture(scope="module")
def peaked(tmp_path_factory):
    """A checkpoint directory of a small random Llama whose weights are scaled up, so its next-token distributions are
    peaked (distinct candidates, as a trained model's are; at the usual init every score is nearly equal), loaded
    by llmpipe and by transformers; with three prompts of 7, 12 and 3 tokens."""
    from llmpipe.artifacts.checkpoint import write_model_dir
    from llmpipe.model import Model, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=300, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=128, pad_token_id=PAD)
    model = Model(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    path = tmp_path_factory.mktemp("peaked")
    write_model_dir(path, model.state_dict(), config.to_hf())
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 300, (n,), generator=g).tolist() for n in (7, 12, 3)]
    return Model.from_checkpoint(path).eval(), transformers.AutoModelForCausalLM.from_pretrained(path).eval(), prompts


def hf_generate(hf, prompts, **kwargs) -> list[list[int]]:
    """transformers' new tokens for each prompt, the batch left-padded with an attention mask as its docs say."""
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, pad_token_id=PAD, **kwargs)[:, longest:].tolist()


def ours(model, prompts, d: Decoding, eos: int | None) -> list[list[int]]:
    """llmpipe's new tokens for each prompt in transformers' layout (pad ids after a row stops, to the longest row)."""
    stop = () if eos is None else (eos,)
    if d.num_beams > 1:
        rows = beam_search(model, prompts, d, stop)
        return [r + [PAD] * (max(map(len, rows)) - len(r)) for r in rows]
    return torch.stack(list(token_steps(model, prompts, d, stop, d.generator())), dim=1).tolist()


EOS_CHOICES = (72, 8, 165)  # ids this model makes within 20 steps for some prompts: rows and beams end early, others run on


@pytest.mark.parametrize("eos", EOS_CHOICES)
@pytest.mark.parametrize("repetition_penalty", (1.0, 1.3))
def test_greedy_equals_transformers(peaked, eos, repetition_penalty):
    model, hf, prompts = peaked
    reference = hf_generate(hf, prompts, max_new_tokens=20, do_sample=False, eos_token_id=eos, repetition_penalty=repetition_penalty)
    made = ours(model, prompts, Decoding(20, repetition_penalty=repetition_penalty), eos)
    assert [r[:len(reference[0])] for r in made] == reference  # transformers stops when every row has; llmpipe may run on
    assert repetition_penalty != 1.0 or any(eos in r for r in made)  # a row ended early (pad ids after it on both sides)


@pytest.mark.parametrize("num_beams", (2, 4))
@pytest.mark.parametrize("length_penalty", (1.0, 0.0, -1.0, 2.0))
def test_beam_search_equals_transformers(peaked, num_beams, length_penalty):
    model, hf, prompts = peaked
    ended_early = 0
    for eos, repetition_penalty in [(eos, 1.0) for eos in EOS_CHOICES] + [(EOS_CHOICES[0], 1.3)]:
        kwargs = dict(num_beams=num_beams, length_penalty=length_penalty, repetition_penalty=repetition_penalty)
        reference = hf_generate(hf, prompts, max_new_tokens=20, do_sample=False, eos_token_id=eos, **kwargs)
        made = ours(model, prompts, Decoding(20, **kwargs), eos)
        assert made == reference, (eos, repetition_penalty)
        ended_early += sum(len(r) < 20 or eos in r for r in beam_search(model, prompts, Decoding(20, **kwargs), (eos,)))
    assert length_penalty > 1.0 or ended_early  # hypotheses ending at eos won, not only max-length ones (> 1 favours length)


@pytest.mark.parametrize("flags", [
    {"temperature": 0.7},
    {"temperature": 1.3, "top_k": 20},
    {"temperature": 1.0, "top_p": 0.8},
    {"temperature": 0.9, "min_p": 0.1},
    {"temperature": 1.2, "top_k": 50, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.2},
])
def test_sampling_with_the_same_seed_equals_transformers(peaked, flags):
    """Same processors in the same order, one multinomial draw per step over the vocabulary: llmpipe's generator
    seeded with s draws what transformers draws after torch.manual_seed(s)."""
    model, hf, prompts = peaked
    torch.manual_seed(11)
    reference = hf_generate(hf, prompts, max_new_tokens=30, do_sample=True, eos_token_id=72, **{"top_k": 0, **flags})
    made = ours(model, prompts, Decoding(30, seed=11, **flags), 72)
    assert [r[:len(reference[0])] for r in made] == reference


def test_a_row_of_a_batch_decodes_as_it_does_alone_and_without_the_cache(peaked):
    model, _, prompts = peaked
    together = ours(model, prompts, Decoding(16), None)
    for prompt, row in zip(prompts, together):
        assert ours(model, [prompt], Decoding(16), None)[0] == row
        assert torch.stack(list(token_steps(model, [prompt], Decoding(16), use_cache=False)), dim=1)[0].tolist() == row


# ---------------------------------------------------------------- the processors, on hand-made scores


def kept(scores: torch.Tensor) -> list[int]:
    return torch.isfinite(scores[0]).nonzero()[:, 0].tolist()


def test_top_k_keeps_the_k_highest_and_ties_with_the_kth():
    scores = torch.tensor([[1.0, 5.0, 3.0, 3.0, -2.0]])
    assert kept(keep_top_k(scores, 1)) == [1]
    assert kept(keep_top_k(scores, 2)) == [1, 2, 3]  # 3.0 ties the 2nd highest: both stay
    assert kept(keep_top_k(scores, 4)) == [0, 1, 2, 3]
    assert kept(keep_top_k(scores, 0)) == kept(keep_top_k(scores, 9)) == [0, 1, 2, 3, 4]
    assert torch.equal(keep_top_k(scores, 2)[0, [1, 2, 3]], scores[0, [1, 2, 3]])  # kept scores are unchanged


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.1, 0.4, 0.05, 0.3, 0.15]])  # by rank: 0.4 (1), 0.3 (3), 0.15 (4), 0.1 (0), 0.05 (2)
    scores = probs.log()
    assert kept(keep_top_p(scores, 0.4)) == [1]  # 0.4 reaches 0.4 alone
    assert kept(keep_top_p(scores, 0.41)) == [1, 3]
    assert kept(keep_top_p(scores, 0.7)) == [1, 3]  # 0.4 + 0.3 = 0.7 reaches it
    assert kept(keep_top_p(scores, 0.71)) == [1, 3, 4]
    assert kept(keep_top_p(scores, 0.96)) == [0, 1, 2, 3, 4]
    assert kept(keep_top_p(scores, 0.01)) == [1]  # the most likely token always stays
    assert kept(keep_top_p(scores, 1.0)) == [0, 1, 2, 3, 4]


def test_min_p_keeps_tokens_at_least_min_p_times_the_top_one():
    scores = torch.tensor([[0.1, 0.4, 0.05, 0.3, 0.15]]).log()
    assert kept(keep_min_p(scores, 0.5)) == [1, 3]  # >= 0.2
    assert kept(keep_min_p(scores, 0.25)) == [0, 1, 3, 4]  # >= 0.1
    assert kept(keep_min_p(scores, 1.0)) == [1]
    assert kept(keep_min_p(scores, 0.0)) == [0, 1, 2, 3, 4]


def test_repetition_penalty_divides_positive_and_multiplies_negative_scores_of_seen_tokens():
    scores = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert penalize_repetition(scores, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]
    assert penalize_repetition(scores, seen, 1.0).tolist() == scores.tolist()


def test_processors_keep_what_transformers_warpers_keep():
    from transformers.generation.logits_process import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(3)
    scores = torch.randn(64, 500, generator=g) * 3
    for ours_, theirs in ((lambda s: keep_top_k(s, 40), TopKLogitsWarper(40)), (lambda s: keep_top_p(s, 0.9), TopPLogitsWarper(0.9)),
                          (lambda s: keep_min_p(s, 0.05), MinPLogitsWarper(0.05))):
        assert torch.equal(torch.isfinite(ours_(scores)), torch.isfinite(theirs(None, scores.clone())))


# ---------------------------------------------------------------- text: stop strings, prompt files, the command


@pytest.fixture(scope="module")
def trained(chat_base):
    from llmpipe.generate import load_for_generation

    return load_for_generation(chat_base / "model")


def test_stop_strings_cut_the_completion_before_them(trained):
    from llmpipe.generate import complete

    model, tok = trained
    # sampled (this 30-step model's greedy text is one repeated token): the first seed whose text has 3 words
    for seed in range(20):
        d = Decoding(24, temperature=1.0, seed=seed)
        free = complete(model, tok, ["The city"], d)[0]
        words = free.completion.split()
        if len(words) >= 3 and free.finish_reason == "length":
            break
    assert len(words) >= 3 and free.new_tokens == 24, free
    stop = words[2]
    cut = complete(model, tok, ["The city"], d, stop=[stop, "never in it"])[0]
    assert cut.finish_reason == "stop" and cut.completion == free.completion[:free.completion.index(stop)]
    assert cut.new_tokens < 24  # decoding stopped there, not after max_new_tokens
    beams = complete(model, tok, ["The city"], Decoding(24, num_beams=3), stop=[stop])[0]
    assert stop not in beams.completion and beams.finish_reason in ("stop", "length")


def test_a_batch_of_prompts_gives_each_prompt_its_own_greedy_completion(trained):
    from llmpipe.generate import complete

    model, tok = trained
    prompts = ["The city", "In 2019, the company announced that", "A"]
    together = complete(model, tok, prompts, Decoding(16), batch_size=3)
    alone = [complete(model, tok, [p], Decoding(16))[0] for p in prompts]
    assert together == alone


def test_generate_prompts_file_writes_one_json_line_per_prompt(chat_base, tmp_path):
    prompts = tmp_path / "my.prompts.v2.txt"  # dots in the name; a blank line is skipped
    prompts.write_text("The city\n\nIn 2019, the company\nA\n", encoding="utf-8")
    res = run_cli("generate", str(chat_base / "model"), "--prompts", prompts.name, "--max-new-tokens", "8", "--num-beams", "2",
                  "--output", "out/completions.jsonl", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "completions.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["The city", "In 2019, the company", "A"]
    assert all(r["new_tokens"] <= 8 and r["finish_reason"] in ("stop", "length") and r["completion"] for r in rows)
    assert "generate: 3 prompts," in res.stderr and "tokens/s" in res.stderr
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "The city", "id": 1}\n', encoding="utf-8")
    res = run_cli("generate", str(chat_base / "model"), "--prompts", "p.jsonl", "--max-new-tokens", "8", "--num-beams", "2",
                  cwd=tmp_path, timeout=300)
    assert res.returncode == 0 and json.loads(res.stdout) == rows[0]  # stdout without --output


def test_generate_mistakes_are_one_line(chat_base, tmp_path):
    model = str(chat_base / "model")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n', encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "long.txt").write_text("ok\n" + "word " * 400 + "\n", encoding="utf-8")
    cases = [
        (["--num-beams", "3", "--temperature", "0.8"], "error: --num-beams: beam search here is deterministic; give --temperature 0 (the default) with it"),
        (["--top-k", "50"], "error: --top-k/--top-p/--min-p: they shape sampling, which --temperature 0 turns off; give a temperature above 0"),
        (["--output", "x.jsonl"], "error: generate --output: it holds the completions of --prompts; give --prompts FILE too"),
        (["--prompts", "nope.txt"], "error: generate --prompts: nope.txt does not exist; give a file of prompts, one per line"),
        (["--prompts", "bad.jsonl"], 'error: generate --prompts bad.jsonl line 2: a JSONL prompt file holds objects with a "prompt" string'),
        (["--prompts", "empty.txt"], "error: generate --prompts: empty.txt holds no prompts"),
    ]
    for flags, line in cases:
        assert _one_line_error(tmp_path, "generate", model, *flags) == line.replace(str(tmp_path), "<tmp>"), flags
    line = _one_line_error(tmp_path, "generate", model, "--prompts", "long.txt", "--output", "o.jsonl")
    assert line.startswith("error: generate --prompts long.txt line 2: ") and "leave no room in the model's context of 256 tokens" in line
    assert not (tmp_path / "o.jsonl").exists()  # every prompt is checked before anything is written

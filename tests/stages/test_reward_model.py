"""reward-model: the Bradley-Terry loss by hand; on real answers against word-shuffled copies of them the held-out pair
accuracy rises well above chance; the export is a sequence classifier transformers loads, with llmpipe's rewards;
mistakes are one line.

The task: Alpaca answers (chosen) against the same words shuffled (rejected). The text is real and both sides have
the same length and the same words, so only word order tells them apart: a preference a 2-layer model learns in a
minute of CPU, where hh-rlhf's or dpo_en_demo's need knowledge a model this small lacks (held-out accuracy near chance).
"""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import run_cli
from tests.stages.test_dpo import _shuffled_pairs
from tests.test_errors import _one_line_error

torch = pytest.importorskip("torch")


def test_bradley_terry_loss_by_hand():
    from llmpipe.train.reward import bradley_terry_loss

    chosen, rejected = torch.tensor([1.5, -0.2, 0.3]), torch.tensor([0.5, 0.4, 0.3])
    by_hand = [-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in zip(chosen.tolist(), rejected.tolist())]
    loss, metrics = bradley_terry_loss(chosen, rejected)
    assert loss.item() == pytest.approx(sum(by_hand) / 3, abs=1e-6)
    assert metrics["accuracy"].item() == pytest.approx(1 / 3), "a tie is not a win (TRL: chosen strictly above rejected)"
    assert metrics["margin"].item() == pytest.approx((1.0 - 0.6 + 0.0) / 3, abs=1e-6)
    centred, _ = bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.01)
    assert centred.item() == pytest.approx(sum(by_hand) / 3 + 0.01 * (2.0**2 + 0.2**2 + 0.6**2) / 3, abs=1e-6)


@pytest.mark.slow
def test_reward_model_learns_a_preference_and_transformers_scores_as_llmpipe(chat_base, shared_data):
    transformers = pytest.importorskip("transformers")
    from llmpipe.model import Model
    from llmpipe.stats import TaskStats
    from llmpipe.text.tokenizer import load_tokenizer
    from stages.reward_model import Params, load_pairs, pair_rewards

    data = _shuffled_pairs(shared_data, chat_base / "rm-shuffled.jsonl", n=1000)
    args = {"max_seq_len": 64, "batch_size": 16, "micro_batch": 8, "max_steps": 160, "lr": 1e-3, "val_fraction": 0.2}
    run_cli("reward-model", "--input", str(data), "--output", "rm", "--checkpoint", "model", "--device", "cpu",
            *(x for k, v in args.items() for x in (f"--{k.replace('_', '-')}", str(v))), cwd=chat_base, check=True, env={"OMP_NUM_THREADS": "1"})
    out = chat_base / "rm"
    m = json.loads((out / "_manifest.json").read_text())
    before, after = m["metrics"]["eval_accuracy_before"], m["metrics"]["eval_accuracy"]
    print(f"reward model (2 layers, d 64) on Alpaca answers vs word-shuffled copies, {m['counts']['train_pairs']} train pairs, 160 steps: "
          f"held-out pair accuracy {before:.3f} -> {after:.3f} on {m['counts']['val_pairs']} pairs, "
          f"loss {m['metrics']['val_loss_before']:.3f} -> {m['metrics']['val_loss']:.3f}, margin {m['metrics']['eval_margin']:.3f}")
    assert m["counts"]["val_pairs"] >= 150  # at chance, accuracy on 150 pairs has a standard deviation of 0.04
    # lr 1e-3 for 160 steps: held-out accuracy 0.755-0.852 over seeds 0-7 here. At 3e-3 for 80 steps two seeds in five
    # stayed near chance, and another CPU's float rounding gave 0.698 on CI: the margin must not hang on one seed.
    assert after >= 0.7 and after >= before + 0.1, m["metrics"]

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["num_labels"] == 1 and config["pad_token_id"] == 3
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(hf).__name__ == "LlamaForSequenceClassification" and hf.config.num_labels == 1
    ours = Model.from_checkpoint(out).eval()
    assert "score.weight" in dict(ours.named_parameters()) and not hasattr(ours, "lm_head")

    # the held-out pairs as the stage read them: transformers' rewards on them are llmpipe's, and so is its accuracy
    params = Params(checkpoint=str(chat_base / "model"), seed=0, val_fraction=0.2)
    _, held_out = load_pairs([str(data)], params, load_tokenizer(out), 64, TaskStats())
    assert len(held_out) == m["counts"]["val_pairs"]
    wins, worst = 0, 0.0
    for k in range(0, len(held_out), 16):
        batch = held_out[k:k + 16]
        rows = [x.chosen for x in batch] + [x.rejected for x in batch]
        width = max(map(len, rows))
        ids = torch.tensor([r + [3] * (width - len(r)) for r in rows])  # right-padded with the pad id, as the stage pads
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        with torch.no_grad():
            theirs = hf(input_ids=ids, attention_mask=mask).logits[:, 0]
            chosen, rejected = pair_rewards(ours, batch, 3, "cpu")
        worst = max(worst, (theirs - torch.cat((chosen, rejected))).abs().max().item())
        wins += (theirs[:len(batch)] > theirs[len(batch):]).sum().item()
    print(f"transformers vs llmpipe rewards on {len(held_out)} held-out pairs: max |difference| {worst:.2e}; "
          f"transformers' pair accuracy {wins / len(held_out):.5f}")
    assert worst < 1e-5
    assert wins / len(held_out) == pytest.approx(after, abs=1e-5)


def test_mistakes_are_one_line(chat_base, tmp_path, shared_data):
    """Wrong params, a base that is no checkpoint, and a reward model where a language model is needed."""
    import llmpipe

    data = str(shared_data / "preference" / "dpo_en_demo.json")
    line = _one_line_error(tmp_path, "reward-model", "--input", data, "--output", "rm", "--checkpoint", str(chat_base / "model"), "--format", "kto")
    assert line == "error: reward_model --format: expected one of auto, paired, hh_rlhf, sharegpt (a reward model learns from pairs), got 'kto'"
    line = _one_line_error(tmp_path, "reward-model", "--input", data, "--output", "rm", "--checkpoint", str(chat_base / "tok"))
    assert line.startswith("error: reward_model --checkpoint: ") and "has no model.safetensors" in line
    rm = tmp_path.parent / f"{tmp_path.name}-rm"  # outside tmp_path, which must stay as it was
    m = llmpipe.run_stage("reward_model", [data], rm, checkpoint=str(chat_base / "model"), max_steps=1, batch_size=4, micro_batch=4,
                          max_seq_len=64, device="cpu")
    assert m["counts"]["steps"] == 1 and 0 <= m["metrics"]["eval_accuracy"] <= 1
    line = _one_line_error(tmp_path, "sft", "--input", data, "--output", "sft", "--checkpoint", str(rm))
    assert line == "error: sft --checkpoint: <tmp>-rm is a reward model (a sequence scorer), not a language model; give a pretrain, sft or dpo output"
    line = _one_line_error(tmp_path, "generate", str(rm), "--prompt", "Hello")
    assert line.startswith("error: generate: <tmp>-rm is a reward model (it scores text, it does not write any); ")

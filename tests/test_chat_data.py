"""chat_data: the real SFT and preference files are detected as their formats with no bad row; broken
rows are counted by reason with their file:row; JSON, JSONL (.gz, .zst) and Parquet read alike."""

from __future__ import annotations

import gzip
import json

import pytest

from llmpipe.stats import TaskStats
from llmpipe.text.chat_data import read_chat, read_chat_file

# file -> (format, rows); every row of these real files becomes a conversation
REAL_FILES = {
    "sft/alpaca_en_demo.json": ("alpaca", 999),
    "sft/gsm8k_train_alpaca.json": ("alpaca", 7473),
    "sft/alpaca_seed_tasks.jsonl": ("alpaca", 175),  # Self-Instruct seed tasks: instruction + instances
    "sft/litgpt_fixtures/alpaca.json": ("alpaca", 23),
    "sft/litgpt_fixtures/dolly.json": ("alpaca", 12),  # instruction, context, response
    "sft/litgpt_fixtures/longform_train.json": ("alpaca", 17),  # input, output (no instruction)
    "sft/litgpt_fixtures/longform_val.json": ("alpaca", 9),
    "sft/dolly_hhrlhf_train_small.jsonl": ("prompt_response", 1000),
    "sft/llmfoundry_finetune_example.jsonl": ("multiple_choice", 100),  # query, choices, gold
    "preference/dpo_en_demo.json": ("sharegpt", 300),
    "preference/kto_en_demo.json": ("messages", 300),
}


def read(path, **kw) -> tuple[list, TaskStats]:
    stats = TaskStats()
    return list(read_chat_file(path, stats=stats, **kw)), stats


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_are_detected_with_no_bad_row(shared_data, name):
    fmt, n = REAL_FILES[name]
    rows, stats = read(shared_data / name)
    assert dict(stats.counts) == {"rows": n, f"format_{fmt}": n, "conversations": n}
    assert dict(stats.skipped) == {}
    assert rows[0][0] == f"{shared_data / name}:1"
    for _, messages in rows:
        roles = [m["role"] for m in messages]
        body = roles[1:] if roles[0] == "system" else roles
        assert body == ["user", "assistant"] * (len(body) // 2) and all(isinstance(m["content"], str) for m in messages)


def test_rows_become_the_expected_messages(shared_data):
    sft = shared_data / "sft"
    alpaca = dict(read(sft / "alpaca_en_demo.json")[0])
    row = json.loads((sft / "alpaca_en_demo.json").read_text())[5]
    assert row["input"]  # instruction and input joined by a newline, as LLaMA-Factory does
    assert alpaca[f"{sft / 'alpaca_en_demo.json'}:6"] == [
        {"role": "user", "content": row["instruction"] + "\n" + row["input"]}, {"role": "assistant", "content": row["output"]}]

    dolly = read(sft / "litgpt_fixtures/dolly.json")[0][0][1]
    assert dolly[0]["content"].startswith("When did Virgin Australia start operating?\nVirgin Australia, the trading name")
    assert dolly[1] == {"role": "assistant", "content": json.loads((sft / "litgpt_fixtures/dolly.json").read_text())[0]["response"]}

    seed = read(sft / "alpaca_seed_tasks.jsonl")[0][1][1]  # seed_task_1: the instance's input follows the instruction
    assert seed[0]["content"] == "What is the relation between the given pairs?\nNight : Day :: Right : Left"
    assert seed[1]["content"] == "The relation between the given pairs is that they are opposites."

    mc = read(sft / "llmfoundry_finetune_example.jsonl")[0][0][1]
    assert mc == [{"role": "user", "content": "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\n"
                   "\nOptions:\n - Sunlight is the source of energy for nearly all ecosystems.\n - Most ecosystems are found on land instead of in water."
                   "\n - Carbon dioxide is more available than other gases.\n - The producers in all ecosystems are plants.\nAnswer:"},
                  {"role": "assistant", "content": "Sunlight is the source of energy for nearly all ecosystems."}]

    prompt = read(sft / "dolly_hhrlhf_train_small.jsonl")[0][0][1]
    assert prompt[0]["content"].endswith("### Instruction:\nwhat is kangen water?\n\n### Response:\n")
    assert prompt[1]["content"].startswith("Kangen water is alkaline ionized water")


def test_sharegpt_preference_rows_learn_the_chosen_reply(shared_data):
    path = shared_data / "preference/dpo_en_demo.json"
    data = json.loads(path.read_text())
    rows = dict(read(path)[0])
    multi = next(i for i, r in enumerate(data) if len(r["conversations"]) == 7)  # human gpt human gpt human gpt human
    messages = rows[f"{path}:{multi + 1}"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 4
    assert messages[-1]["content"] == data[multi]["chosen"]["value"]
    system = next(i for i, r in enumerate(data) if r["conversations"][0]["from"] == "system")
    first = rows[f"{path}:{system + 1}"][0]
    assert first == {"role": "system", "content": data[system]["conversations"][0]["value"]}
    totals = {}
    for messages in rows.values():
        totals[len(messages)] = totals.get(len(messages), 0) + 1
    assert totals == {2: 114, 3: 80, 4: 1, 6: 57, 8: 46, 10: 1, 14: 1}  # the file's turn counts, plus the chosen reply


# one row per reason; the good rows around them must still come out
BROKEN = [
    {"instruction": "Say hi", "input": "", "output": "hi"},                            # 1 good
    "just a string",                                                                   # 2 not_an_object
    {"title": "a web page", "text": "no chat here"},                                   # 3 read as alpaca (the row before): no output
    {"messages": [{"role": "user", "content": "Hi"}]},                                 # 4 no_assistant_turn
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]},  # 5 empty_content
    {"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Yo"}]},  # 6 roles_out_of_order
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A"}]},  # 7 roles_out_of_order
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "B"}]},  # 8 last_turn_not_assistant
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "{}"}]},  # 9 unknown_role
    {"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "A"}]},  # 10 wrong_type
    {"messages": "user: hi"},                                                          # 11 wrong_type
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": None}]},  # 12 empty_content
    {"query": "Q?", "choices": ["a", "b"], "gold": 2},                                 # 13 bad_gold
    {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                  {"role": "assistant", "content": "Hello"}]},                         # 14 good: empty system dropped, text parts joined
]


def test_broken_rows_are_counted_by_reason_with_their_row(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in BROKEN) + "{not json\n\n")
    rows, stats = read(path)
    assert rows == [(f"{path}:1", [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]),
                    (f"{path}:14", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])]
    assert dict(stats.skipped) == {"not_an_object": 1, "no_assistant_turn": 2, "empty_content": 2, "roles_out_of_order": 2,
                                   "last_turn_not_assistant": 1, "unknown_role": 1, "wrong_type": 2, "bad_gold": 1, "bad_json": 1}
    assert stats.counts["rows"] == 14 and stats.counts["conversations"] == 2  # the broken JSON line is no row
    assert stats.samples["roles_out_of_order"] == [f"{path}:6: assistant user", f"{path}:7: user user assistant"]
    assert stats.samples["unknown_role"] == [f"{path}:9: messages[1] role 'tool'"]
    assert stats.samples["bad_gold"] == [f"{path}:13: gold 2 for 2 choices"]
    assert stats.samples["bad_json"] == ["mixed.jsonl:15"]
    first = TaskStats()
    assert list(read_chat_file(path, stats=first)) == rows  # no state kept between reads


def test_a_row_with_no_format_before_any_format_is_named(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": 1, "text": "a page"}) + "\n" + json.dumps([1, 2]) + "\n")
    rows, stats = read(path)
    assert rows == [] and dict(stats.skipped) == {"no_format": 1, "not_an_object": 1}
    assert stats.samples["no_format"] == [f"{path}:1: id, text"]


def test_forced_format_reads_every_row_as_it(shared_data, tmp_path):
    rows, stats = read(shared_data / "sft/litgpt_fixtures/alpaca.json", format="sharegpt")
    assert rows == [] and dict(stats.skipped) == {"missing_field": 23}
    assert stats.samples["missing_field"][0].endswith("alpaca.json:1: no conversations")
    # a file whose rows name two formats: auto reads each as its own, a forced one rejects the others
    path = tmp_path / "two.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n" + json.dumps({"instruction": "i", "output": "o"}) + "\n")
    assert [m for _, m in read(path)[0]] == [[{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}],
                                             [{"role": "user", "content": "i"}, {"role": "assistant", "content": "o"}]]
    rows, stats = read(path, format="prompt_response")
    assert len(rows) == 1 and dict(stats.skipped) == {"no_assistant_turn": 1}
    assert stats.samples["no_assistant_turn"] == [f"{path}:2: no completion"]
    with pytest.raises(ValueError, match=r"chat data format: expected auto or one of alpaca, messages, sharegpt, prompt_response, multiple_choice, got 'chatml'"):
        read(path, format="chatml")


def test_json_shapes_compression_and_parquet_read_alike(shared_data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    data = json.loads((shared_data / "preference/kto_en_demo.json").read_text())[:20]
    want = [[{"role": m["role"], "content": m["content"]} for m in r["messages"]] for r in data]
    lines = "".join(json.dumps(r) + "\n" for r in data)
    (tmp_path / "obj.json").write_text(json.dumps({"version": 1, "train": data}))  # an object holding one list
    (tmp_path / "lines.json").write_text(lines)  # JSON Lines saved as .json
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    (tmp_path / "one.json").write_text(json.dumps(data[0]))  # one conversation as an object
    pq.write_table(pa.Table.from_pylist([{"messages": r["messages"], "label": r["label"]} for r in data]), tmp_path / "a.parquet")
    for name in ("obj.json", "lines.json", "a.jsonl.gz", "a.jsonl.zst", "a.parquet"):
        rows, stats = read(tmp_path / name)
        assert [m for _, m in rows] == want, name
        assert [k for k, _ in rows] == [f"{tmp_path / name}:{i}" for i in range(1, 21)]
    assert [m for _, m in read(tmp_path / "one.json")[0]] == want[:1]
    stats = TaskStats()
    both = list(read_chat([tmp_path / "a.parquet", tmp_path / "one.json"], stats=stats))
    assert len(both) == 21 and stats.counts["format_messages"] == 21


def test_unreadable_files_are_counted_not_raised(shared_data, tmp_path):
    (tmp_path / "bad.json").write_text('[{"instruction": "a", "output": "b"}, {"instru')
    (tmp_path / "two_lists.json").write_text(json.dumps({"train": [], "test": []}))
    lines = (shared_data / "sft/dolly_hhrlhf_train_small.jsonl").read_bytes().splitlines(keepends=True)[:50]
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(b"".join(lines))[:-2000])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    stats = TaskStats()
    rows = list(read_chat([tmp_path / n for n in ("bad.json", "two_lists.json", "cut.jsonl.gz", "bad.parquet")], stats=stats))
    assert 0 < len(rows) < 50  # the rows before the cut
    assert dict(stats.skipped) == {"bad_json": 2, "truncated_file": 1, "bad_parquet": 1}
    assert stats.samples["bad_json"][1] == f"{tmp_path / 'two_lists.json'}: an object without one list of rows (fields: train, test)"
    with pytest.raises(ValueError, match=r"chat data: .*notes.txt: expected a .json, .jsonl or .parquet file \(optionally .gz or .zst\)"):
        list(read_chat_file(tmp_path / "notes.txt"))

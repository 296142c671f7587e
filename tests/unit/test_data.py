"""Prompt datasets and the loader: jsonl / parquet, chat and plain templates, clear errors for bad files,
over-long prompts, and a seeded loader that resumes exactly where it stopped."""

from __future__ import annotations

import json

import pytest

from sfpo_rl.data.dataset import PromptDataset, format_prompt, load_records
from sfpo_rl.data.io import DataError, write_records
from sfpo_rl.data.loader import PromptLoader
from sfpo_rl.tiny.model import build_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def record(i: int, **overrides) -> dict:
    row = {
        "prompt": f"Question {i}: what is {i} + {i}?",
        "ground_truth": str(2 * i),
        "data_source": "arith",
        "extra_info": {"index": i},
    }
    row.update(overrides)
    return row


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer([record(i)["prompt"] for i in range(50)], vocab_size=300)


@pytest.fixture(scope="module")
def chat_tokenizer():
    tok = build_tokenizer([record(i)["prompt"] for i in range(50)], vocab_size=300)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_files_load_with_the_same_content(tmp_path, tokenizer, suffix):
    rows = [record(i) for i in range(5)] + [
        {"prompt": "verl style", "reward_model": {"ground_truth": 7}, "data_source": "gsm8k"}
    ]
    path = write_records(rows, tmp_path / f"data{suffix}")
    dataset = PromptDataset(path, tokenizer)
    assert len(dataset) == 6
    item = dataset[2]
    assert item["raw_prompt"] == "Question 2: what is 2 + 2?"
    assert item["prompt_token_ids"] == tokenizer(item["raw_prompt"], add_special_tokens=False)["input_ids"]
    assert (item["ground_truth"], item["data_source"], item["extra_info"]) == ("4", "arith", {"index": 2})
    assert (dataset[5]["ground_truth"], dataset[5]["extra_info"]) == ("7", {})  # numbers become text


def test_several_files_are_concatenated(tmp_path, tokenizer):
    a = write_records([record(i) for i in range(3)], tmp_path / "a.jsonl")
    b = write_records([record(i) for i in range(3, 5)], tmp_path / "b.parquet")
    assert [r.ground_truth for r in load_records([a, b])] == ["0", "2", "4", "6", "8"]


def test_chat_messages_with_and_without_a_chat_template(tmp_path, tokenizer, chat_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 1 + 1?"},
    ]
    path = write_records([record(0, prompt=messages), record(1)], tmp_path / "chat.jsonl")

    chat = PromptDataset(path, chat_tokenizer)
    assert chat[0]["raw_prompt"] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # A plain-text prompt becomes one user message.
    assert chat[1]["raw_prompt"].startswith("<|im_start|>user\nQuestion 1:")
    # The template's special tokens are single tokens and nothing else is added.
    assert chat[0]["prompt_token_ids"][0] == chat_tokenizer.convert_tokens_to_ids("<|im_start|>")

    # A plain template replaces the chat template; message contents are joined by blank lines.
    plain = PromptDataset(path, chat_tokenizer, prompt_template="Q: {prompt}\nA:")
    assert plain[0]["raw_prompt"] == "Q: Be brief.\n\nWhat is 1 + 1?\nA:"
    assert plain[1]["raw_prompt"] == "Q: Question 1: what is 1 + 1?\nA:"
    # No chat template and no plain template: the contents as they are.
    assert PromptDataset(path, tokenizer)[0]["raw_prompt"] == "Be brief.\n\nWhat is 1 + 1?"
    assert format_prompt("x", tokenizer, "{prompt}") == "x"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "a", "ground_truth": "1", "data_source": "arith"}', "{oops"], "line 2: invalid JSON"),
        (["[1, 2]"], "line 1: expected a JSON object, got list"),
        (['{"ground_truth": "1", "data_source": "arith"}'], "line 1: missing field 'prompt'"),
        (['{"prompt": "a", "data_source": "arith"}'], "line 1: missing field 'ground_truth'"),
        (
            ['{"prompt": "a", "ground_truth": null, "data_source": "x"}'],
            "line 1: missing field 'ground_truth'",
        ),
        (['{"prompt": "a", "ground_truth": "1"}'], "line 1: missing field 'data_source'"),
        (
            ['{"prompt": "a", "reward_model": {}, "data_source": "x"}'],
            "missing field 'reward_model.ground_truth'",
        ),
        (['{"prompt": "  ", "ground_truth": "1", "data_source": "x"}'], "line 1: field 'prompt' is empty"),
        (
            ['{"prompt": 5, "ground_truth": "1", "data_source": "x"}'],
            "field 'prompt' must be a non-empty string",
        ),
        (['{"prompt": [], "ground_truth": "1", "data_source": "x"}'], "field 'prompt' must be a non-empty"),
        (
            ['{"prompt": [{"role": "user"}], "ground_truth": "1", "data_source": "x"}'],
            "line 1: field 'prompt\\[0\\].content' must be a string",
        ),
        (
            ['{"prompt": ["hi"], "ground_truth": "1", "data_source": "x"}'],
            "field 'prompt\\[0\\]' must be a message",
        ),
        (
            ['{"prompt": "a", "ground_truth": [1], "data_source": "x"}'],
            "field 'ground_truth' must be a string or",
        ),
        (
            ['{"prompt": "a", "ground_truth": true, "data_source": "x"}'],
            "field 'ground_truth' must be a string or",
        ),
        (
            ['{"prompt": "a", "ground_truth": "1", "data_source": ""}'],
            "field 'data_source' must be a non-empty",
        ),
        (
            ['{"prompt": "a", "ground_truth": "1", "data_source": "arith", "extra_info": [1]}'],
            "line 1: field 'extra_info' must be a mapping",
        ),
        ([""], "contains no records"),
    ],
)
def test_bad_jsonl_names_file_line_and_field(tmp_path, tokenizer, lines, message):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match=f"bad.jsonl.*{message}"):
        PromptDataset(path, tokenizer)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            record(1, data_source="poetry"),
            "line 2: field 'data_source': no verifier for data_source 'poetry'",
        ),
        (record(1, ground_truth="  "), "line 2: field 'ground_truth' is empty"),
        (
            {"prompt": "a", "reward_model": {"ground_truth": ""}, "data_source": "math"},
            "line 2: field 'reward_model.ground_truth' is empty",
        ),
        (record(1, ground_truth="?", data_source="math500"), "line 2: field 'ground_truth' holds no answer"),
        (
            record(1, ground_truth="five", data_source="openai/gsm8k"),
            "line 2: field 'ground_truth' is not a number .*the gsm8k verifier",
        ),
        (record(1, ground_truth="4.5"), "line 2: field 'ground_truth' is not an integer"),
    ],
)
def test_rows_a_verifier_cannot_score_are_refused_at_load(tmp_path, tokenizer, row, message):
    """Before: an unknown source failed a scoring batch mid-run, an empty ground truth matched \\boxed{}."""
    path = write_records([record(0), row], tmp_path / "rows.jsonl")
    with pytest.raises(DataError, match=f"rows.jsonl, {message}"):
        PromptDataset(path, tokenizer)


def test_a_custom_reward_function_accepts_any_data_source(tmp_path, tokenizer):
    rows = [record(0, data_source="poetry"), record(1, data_source="olympiadbench", ground_truth="\\frac12")]
    path = write_records(rows, tmp_path / "rows.jsonl")
    assert len(PromptDataset(path, tokenizer, reward_function="my_rewards.py:score")) == 2
    with pytest.raises(DataError, match="line 1: field 'data_source': no verifier for data_source 'poetry'"):
        PromptDataset(path, tokenizer)
    empty = write_records([record(0, data_source="poetry", ground_truth="")], tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="line 1: field 'ground_truth' is empty"):
        PromptDataset(empty, tokenizer, reward_function="my_rewards.py:score")


def test_bad_parquet_and_other_files(tmp_path, tokenizer):
    path = write_records([record(0), record(1, data_source=None)], tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="bad.parquet, row 1: missing field 'data_source'"):
        PromptDataset(path, tokenizer)
    no_prompt = write_records(
        [{"question": "a", "ground_truth": "1", "data_source": "x"}], tmp_path / "q.parquet"
    )
    with pytest.raises(
        DataError, match="q.parquet, row 0: missing field 'prompt' \\(fields present: data_source, "
    ):
        PromptDataset(no_prompt, tokenizer)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="corrupt.parquet: cannot read as parquet"):
        PromptDataset(corrupt, tokenizer)
    with pytest.raises(DataError, match="missing.jsonl: no such file"):
        PromptDataset(tmp_path / "missing.jsonl", tokenizer)
    csv = tmp_path / "data.csv"
    csv.write_text("prompt,ground_truth\n")
    with pytest.raises(DataError, match="data.csv: unsupported file type '.csv'"):
        PromptDataset(csv, tokenizer)
    array = tmp_path / "array.json"
    array.write_text(json.dumps([record(0), "x"]))
    with pytest.raises(DataError, match="array.json, element 1: expected a JSON object"):
        PromptDataset(array, tokenizer)


def test_overlong_prompts_filtered_truncated_or_rejected(tmp_path, tokenizer):
    long = "seven " * 40
    rows = [record(0), record(1, prompt=long), record(2), record(3, prompt=long + "end?")]
    path = write_records(rows, tmp_path / "mixed.jsonl")
    limit = 24
    assert len(tokenizer(long, add_special_tokens=False)["input_ids"]) > limit

    filtered = PromptDataset(path, tokenizer, max_prompt_length=limit)
    assert (len(filtered), filtered.num_filtered, filtered.num_truncated) == (2, 2, 0)
    assert [item["ground_truth"] for item in filtered.items] == ["0", "4"]

    truncated = PromptDataset(path, tokenizer, max_prompt_length=limit, overlong="truncate")
    assert (len(truncated), truncated.num_filtered, truncated.num_truncated) == (4, 0, 2)
    kept = truncated[3]
    full = tokenizer(long + "end?", add_special_tokens=False)["input_ids"]
    assert kept["prompt_token_ids"] == full[-limit:]  # the end of the prompt (the question) is kept
    assert kept["raw_prompt"].endswith("end?")
    assert max(len(item["prompt_token_ids"]) for item in truncated.items) == limit

    with pytest.raises(
        DataError, match="mixed.jsonl, line 2: prompt has .* tokens > rollout.max_prompt_length=24"
    ):
        PromptDataset(path, tokenizer, max_prompt_length=limit, overlong="error")
    only_long = write_records([record(1, prompt=long)], tmp_path / "long.jsonl")
    with pytest.raises(
        DataError, match="long.jsonl: all 1 prompts are longer than rollout.max_prompt_length=24"
    ):
        PromptDataset(only_long, tokenizer, max_prompt_length=limit)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"overlong": "drop"}, "data.overlong_prompts must be one of filter, truncate, error"),
        ({"prompt_template": "no placeholder"}, "data.prompt_template must contain {prompt}"),
        ({"max_prompt_length": 0}, "rollout.max_prompt_length must be an integer >= 1"),
    ],
)
def test_bad_dataset_options(tmp_path, tokenizer, options, message):
    path = write_records([record(0)], tmp_path / "ok.jsonl")
    with pytest.raises(ValueError, match=message):
        PromptDataset(path, tokenizer, **options)


# --- loader ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tokenizer):
    path = write_records([record(i) for i in range(23)], tmp_path_factory.mktemp("loader") / "d.jsonl")
    return PromptDataset(path, tokenizer)


def truths(batch) -> list[str]:
    return list(batch["ground_truth"])


def test_loader_is_seeded_and_covers_each_epoch(dataset):
    a, b, c = (PromptLoader(dataset, 5, seed=s) for s in (7, 7, 8))
    epoch_a = [truths(a.next_batch()) for _ in range(len(a))]
    assert epoch_a == [truths(b.next_batch()) for _ in range(len(b))]
    assert epoch_a != [truths(c.next_batch()) for _ in range(len(c))]
    assert len(a) == 4  # 23 prompts, drop_last
    seen = [t for batch in epoch_a for t in batch]
    assert len(set(seen)) == 20 and all(len(batch) == 5 for batch in epoch_a)
    # The next epoch is a different permutation.
    assert [truths(a.next_batch()) for _ in range(len(a))] != epoch_a
    assert a.epoch == 1
    ordered = PromptLoader(dataset, 5, shuffle=False, drop_last=False)
    assert [truths(bt) for bt in ordered][-1] == ["40", "42", "44"]
    batch = ordered.next_batch()
    assert sorted(batch.keys()) == sorted(
        ["raw_prompt", "prompt_token_ids", "ground_truth", "data_source", "extra_info"]
    )


@pytest.mark.parametrize("taken", [0, 2, 4, 9])  # start, mid-epoch, at an epoch's end, in the third epoch
def test_loader_resumes_with_the_identical_continuation(dataset, taken):
    loader = PromptLoader(dataset, 5, seed=3)
    for _ in range(taken):
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))  # it survives a JSON checkpoint
    expected = [truths(loader.next_batch()) for _ in range(6)]

    resumed = PromptLoader(dataset, 5, seed=3)
    resumed.load_state_dict(state)
    assert [truths(resumed.next_batch()) for _ in range(6)] == expected


def test_loader_refuses_a_state_from_other_data(dataset, tmp_path, tokenizer):
    state = PromptLoader(dataset, 5, seed=3).state_dict()
    for other, key in [
        (PromptLoader(dataset, 5, seed=4), "seed"),
        (PromptLoader(dataset, 4, seed=3), "batch_size"),
        (PromptLoader(dataset, 5, seed=3, shuffle=False), "shuffle"),
    ]:
        with pytest.raises(ValueError, match=f"cannot resume the data loader: checkpoint has {key}="):
            other.load_state_dict(state)
    smaller = PromptDataset(write_records([record(i) for i in range(10)], tmp_path / "s.jsonl"), tokenizer)
    with pytest.raises(ValueError, match="checkpoint has num_prompts=23, this run has 10"):
        PromptLoader(smaller, 5, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="fewer than one batch of 11"):
        PromptLoader(smaller, 11)

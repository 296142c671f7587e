"""Bad input to the training job is refused with an error naming the option, file or field, before Ray or any
worker starts. The job runs in this process (`main.run` on a composed config) up to the refusal; one case also
goes through the command line to check its exit code and that stderr carries no traceback. Unknown config keys,
impossible values and malformed data rows are covered where that code lives (counted in the suite summary)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from hydra import compose, initialize_config_dir

from sfpo_rl.data.io import DataError
from sfpo_rl.trainer.checkpoint import CheckpointError
from sfpo_rl.trainer.config import ConfigError
from sfpo_rl.trainer.main import run
from sfpo_rl.trainer.setup import CONFIG_DIR

# Each case loads a model and tokenizer; one runs the whole command line in a subprocess.
pytestmark = pytest.mark.slow

ROW = {"prompt": "What is 2 + 3?", "ground_truth": "5", "data_source": "arith"}


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("bad_inputs")
    good = write_rows(root / "good.jsonl", [ROW, {**ROW, "prompt": "What is 7 - 4?", "ground_truth": "3"}])
    small_vocab = Path(shutil.copytree(tiny_model_dir, root / "small_vocab_model"))
    config = json.loads((small_vocab / "config.json").read_text())
    (small_vocab / "config.json").write_text(json.dumps({**config, "vocab_size": 64}))
    (root / "not_a_model").mkdir()
    return {
        "root": root,
        "not_a_model": root / "not_a_model",
        "good": good,
        "model": Path(tiny_model_dir),
        "small_vocab": small_vocab,
        "empty_prompt": write_rows(root / "empty_prompt.jsonl", [ROW, {**ROW, "prompt": "  "}]),
        "no_records": write_rows(root / "no_records.jsonl", []),
        "unknown_source": write_rows(root / "unknown_source.jsonl", [ROW, {**ROW, "data_source": "poetry"}]),
        "empty_answer": write_rows(root / "empty_answer.jsonl", [ROW, ROW, {**ROW, "ground_truth": ""}]),
    }


def job(
    tmp_path: Path,
    inputs: dict,
    *overrides: str,
    model: Path | None = None,
    train: Path | None = None,
    val: Path | None = None,
):
    """A composed job config on the given model, train and validation file (the good ones by default)."""
    base = [
        f"trainer.run_dir={tmp_path / 'run'}",
        "trainer.experiment_name=bad_input",
        f"model.cache_dir={tmp_path / 'cache'}",
        f"model.path={model or inputs['model']}",
        "data=files",
        f"data.train_files=[{train or inputs['good']}]",
        f"data.val_files=[{val or inputs['good']}]",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[*base, *overrides])


CASES = {
    "missing model path": (
        dict(model="missing"),
        (),
        ConfigError,
        "model.path={missing}: no such directory",
    ),
    "model path without config.json": (
        dict(model="not_a_model"),
        (),
        ConfigError,
        "model.path={not_a_model}: not a Hugging Face model directory (no config.json)",
    ),
    "vocab smaller than the tokenizer": (
        dict(model="small_vocab"),
        (),
        ConfigError,
        "but the model's vocab_size is 64 (config.json)",
    ),
    "empty prompt": (
        dict(train="empty_prompt"),
        (),
        DataError,
        "{empty_prompt}, line 2: field 'prompt' is empty",
    ),
    "data source without a verifier": (
        dict(train="unknown_source"),
        (),
        DataError,
        "{unknown_source}, line 2: field 'data_source': no verifier for data_source 'poetry'",
    ),
    "empty ground truth in the validation file": (
        dict(val="empty_answer"),
        (),
        DataError,
        "{empty_answer}, line 3: field 'ground_truth' is empty",
    ),
    "data file without records": (
        dict(train="no_records"),
        (),
        DataError,
        "{no_records}: contains no records",
    ),
    "every prompt over the length limit": (
        {},
        ("rollout.max_prompt_length=2",),
        DataError,
        "prompts are longer than rollout.max_prompt_length=2",
    ),
    "prompt plus response longer than the model's context": (
        {},
        ("rollout.max_prompt_length=1024",),
        ConfigError,
        "rollout.max_prompt_length + rollout.max_response_length = 1024 + 96 = 1120 tokens, more than the 512 "
        "positions of model.path={model} (max_position_embeddings)",
    ),
    "resume from a missing checkpoint": (
        {},
        ("trainer.resume={missing}",),
        CheckpointError,
        "checkpoint {missing}: no such directory",
    ),
    "max_consecutive_nonfinite below 1": (
        {},
        ("trainer.max_consecutive_nonfinite=0",),
        ConfigError,
        "trainer.max_consecutive_nonfinite must be an integer >= 1",
    ),
    "malformed fault-injection point": (
        {},
        ("faults.nonfinite_loss=[soon]",),
        ConfigError,
        "faults.nonfinite_loss must be a list of",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_by_name_before_anything_starts(tmp_path, inputs, faults, case):
    files, overrides, error, message = CASES[case]
    paths = {
        "missing": inputs["root"] / "missing",
        **{k: v for k, v in inputs.items() if isinstance(v, Path)},
    }
    chosen = {key: paths[name] for key, name in files.items()}
    with faults.bad_input(case):
        cfg = job(tmp_path, inputs, *(o.format(**paths) for o in overrides), **chosen)
        with pytest.raises(error) as caught:
            run(cfg)
        assert message.format(**paths) in str(caught.value)
        assert not ray.is_initialized() and not (tmp_path / "cache").exists()  # nothing expensive ran


def test_command_line_reports_a_bad_model_in_one_line(tmp_path, inputs, faults):
    with faults.bad_input("vocab mismatch on the command line"):
        proc = subprocess.run(
            [sys.executable, "-m", "sfpo_rl.trainer.main"]
            + [f"model.path={inputs['small_vocab']}", "data=files", f"data.train_files=[{inputs['good']}]"]
            + [f"data.val_files=[{inputs['good']}]", f"trainer.run_dir={tmp_path}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2
        assert proc.stderr.startswith(f"sfpo-rl-train: model.path={inputs['small_vocab']}: the tokenizer has")
        assert "Traceback" not in proc.stderr


def test_an_option_at_its_old_place_is_refused_naming_the_new_one(tmp_path, faults):
    for old, new in (
        ("actor.lr", "actor.optimizer.lr"),
        ("trainer.inject_worker_kill", "faults.worker_kill"),
    ):
        with faults.bad_input(f"{old} on the command line"):
            proc = subprocess.run(
                [sys.executable, "-m", "sfpo_rl.trainer.main", f"{old}=[1]", f"trainer.run_dir={tmp_path}"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 2
            assert f"sfpo-rl-train: {old} has moved: it is now {new}" in proc.stderr

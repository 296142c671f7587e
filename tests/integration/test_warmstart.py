"""The embedded default's starting policy: deterministic and cached, shipped in the package and reproduced by
its build, its data fits the default's lengths, it loads in transformers and vLLM, and it solves some
validation problems while it could solve most."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from sfpo_rl.data.dataset import PromptDataset, load_records
from sfpo_rl.protocol import Batch
from sfpo_rl.tiny import shipped
from sfpo_rl.tiny.warmstart import (
    INFO_FILE,
    WarmStartConfig,
    build_warmstart,
    cache_key,
    ensure_warmstart,
    sample_accuracy,
    sampled_outcomes,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT = OmegaConf.load(REPO / "configs/experiment/tiny_arith.yaml")
P, R = DEFAULT.rollout.max_prompt_length, DEFAULT.rollout.max_response_length
# A few-second build of the same code path, for the determinism and cache checks.
SMALL = {"num_train": 300, "num_val": 40, "hidden_size": 32, "num_layers": 1, "sft_steps": 3, "batch_size": 8}


def weights_digest(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


def test_build_is_deterministic_and_cached(tmp_path):
    first = ensure_warmstart(tmp_path / "a", SMALL)
    again = ensure_warmstart(tmp_path / "b", SMALL)
    assert first.name == again.name == f"warmstart-{cache_key(WarmStartConfig.from_any(SMALL))}"
    assert weights_digest(first) == weights_digest(again)
    for name in ("train.jsonl", "val.jsonl", "tokenizer.json"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
    info = json.loads((first / INFO_FILE).read_text())
    assert info["config"]["sft_steps"] == 3 and info["sft"]["steps"] == 3

    # A second call reuses the directory (nothing is rebuilt: the weights file is not rewritten).
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_warmstart(tmp_path / "a", SMALL) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "a").iterdir()] == [first.name]  # no temporary leftovers

    other = ensure_warmstart(tmp_path / "a", {**SMALL, "seed": 1})
    assert other != first and weights_digest(other) != weights_digest(first)


def test_the_shipped_copy_serves_the_default_config_only():
    from sfpo_rl.bench.single_process import compose
    from sfpo_rl.trainer.setup import warmstart_config

    assert shipped.serves(warmstart_config(compose([])))  # what `make train` asks for
    assert shipped.serves(WarmStartConfig())
    assert not shipped.serves(WarmStartConfig(seed=1))
    assert not shipped.serves(WarmStartConfig(extra={"build": "here"}))  # how to build the default locally


def test_the_default_is_installed_from_the_shipped_copy(tmp_path, capsys):
    """No SFT: the package's weights, tokenizer and config, and data files regenerated to the shipped bytes."""
    warm = ensure_warmstart(tmp_path, {"prompt_template": None})
    assert warm.name == f"warmstart-{cache_key(WarmStartConfig())}"
    for name, digest in shipped.manifest()["files"].items():
        assert shipped.sha256(warm / name) == digest, name
    assert "warm-start SFT step" not in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == [warm.name]


def test_a_shipped_copy_this_code_does_not_reproduce_is_built_here(tmp_path, monkeypatch):
    built = ensure_warmstart(tmp_path / "built", SMALL)
    shipped.ship(built, tmp_path / "shipped")
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "shipped")
    assert not (tmp_path / "shipped" / "train.jsonl").exists()  # data files are regenerated, not shipped

    installed = ensure_warmstart(tmp_path / "a", SMALL)
    assert (installed / shipped.MANIFEST).is_file()
    for path in built.iterdir():
        assert (installed / path.name).read_bytes() == path.read_bytes(), path.name

    # The data this code generates differ from the shipped model's: the warm-start is built here instead.
    manifest = json.loads((tmp_path / "shipped" / shipped.MANIFEST).read_text())
    manifest["files"]["val.jsonl"] = "0" * 64
    (tmp_path / "shipped" / shipped.MANIFEST).write_text(json.dumps(manifest))
    rebuilt = ensure_warmstart(tmp_path / "b", SMALL)
    assert not (rebuilt / shipped.MANIFEST).exists() and (rebuilt / INFO_FILE).is_file()
    assert weights_digest(rebuilt) == weights_digest(built)


@pytest.mark.slow
@pytest.mark.timeout(5400)  # SFT 9 min on an idle core, 41 min at load 40-50; comparison 11-15 min at 15-25
def test_the_build_reproduces_the_shipped_warmstart(tmp_path):
    """The build code still makes the shipped warm-start: the data and the tokenizer bit for bit, the weights
    bit for bit where the float kernels are the same (not on every CPU), and in any case a policy whose
    validation accuracy at T=1 (what rollouts and validation sample at) is the shipped one's within noise."""
    cfg = WarmStartConfig()
    assert shipped.serves(cfg)
    build_warmstart(tmp_path, cfg, cache_key(cfg))
    files = shipped.manifest()["files"]
    for name in ("train.jsonl", "val.jsonl", "tokenizer.json"):
        assert shipped.sha256(tmp_path / name) == files[name], name
    model_config = json.loads((tmp_path / "config.json").read_text())
    shipped_config = json.loads((shipped.SHIPPED_DIR / "config.json").read_text())
    assert {k: v for k, v in model_config.items() if k != "transformers_version"} == {
        k: v for k, v in shipped_config.items() if k != "transformers_version"
    }
    identical = shipped.sha256(tmp_path / "model.safetensors") == files["model.safetensors"]
    assert_same_policy_within_noise(tmp_path, shipped.SHIPPED_DIR, tmp_path / "val.jsonl", identical)


def assert_same_policy_within_noise(model_dir: Path, reference_dir: Path, data_file: Path, identical: bool):
    """2 samples at T=1 per validation problem from each model, the same seed. Greedy decoding cannot tell
    the policies apart: it always takes the careless path (0% for both). The accuracies may differ by 3
    standard errors of the difference of two independent binomial means; sampling the same problems makes
    the real difference less noisy than that. Identical weights must give identical samples."""
    sampling = {"temperature": 1.0, "max_new_tokens": R, "num_samples": 2, "seed": 0}
    ours = sampled_outcomes(model_dir, data_file, **sampling)
    theirs = sampled_outcomes(reference_dir, data_file, **sampling)
    n = len(ours[1])
    acc, reference_acc = sum(ours[1]) / n, sum(theirs[1]) / n
    same = sum(a == b for a, b in zip(ours[0], theirs[0]))
    print(
        f"\nweights bit-identical: {identical}; samples identical: {same} of {n}; "
        f"accuracy at T=1 {acc:.4f} built, {reference_acc:.4f} reference"
    )
    assert abs(acc - reference_acc) <= 3 * math.sqrt(
        (acc * (1 - acc) + reference_acc * (1 - reference_acc)) / n
    )
    if identical:
        assert same == n


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="warmstart.sft_step: unknown option"):
        WarmStartConfig.from_any({"sft_step": 3})


@pytest.fixture(scope="module")
def model_dir(warmstart_cache) -> Path:
    """The default warm-start, exactly as `sfpo-rl-train` resolves it (built once per session)."""
    return ensure_warmstart(warmstart_cache, {"prompt_template": None})


@pytest.mark.slow
def test_data_fits_the_default_lengths(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for split in ("train", "val"):
        records = load_records(model_dir / f"{split}.jsonl")
        dataset = PromptDataset(
            model_dir / f"{split}.jsonl", tokenizer, max_prompt_length=P, overlong="error"
        )
        assert max(len(item["prompt_token_ids"]) for item in dataset.items) <= P
        solutions = tokenizer([r.extra_info["solution"] for r in records], add_special_tokens=False)[
            "input_ids"
        ]
        assert max(len(ids) + 1 for ids in solutions) <= R  # + eos


@pytest.mark.slow
def test_the_policy_can_do_more_than_it_does(model_dir):
    """Sampling at T=1 (rollouts and validation), the warm-started policy usually stops one step early, yet is
    almost always right when it finishes: a large, learnable gap between what it does and what it can do."""
    sampled = sample_accuracy(model_dir, model_dir / "val.jsonl", temperature=1.0, max_new_tokens=R, seed=1)
    print(f"\nwarm-start validation accuracy at T=1: {sampled}")
    assert 0.15 <= sampled["acc"] <= 0.45
    assert sampled["finished"] <= 0.5
    assert sampled["acc_if_finished"] >= 0.9


@pytest.mark.slow
def test_vllm_serves_it_like_transformers(model_dir):
    """vLLM (the rollout engine) loads the directory and decodes greedily what transformers decodes."""
    import torch
    from transformers import AutoModelForCausalLM

    from sfpo_rl.workers.rollout import VLLMRollout

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    val = PromptDataset(model_dir / "val.jsonl", tokenizer, max_prompt_length=P)
    items = val.items[:128]
    engine = VLLMRollout(
        model_dir,
        {
            "max_prompt_length": P,
            "max_response_length": R,
            "dtype": "float32",
            "kv_cache_gib": 0.25,
            "seed": 0,
        },
    )
    batch = Batch.from_dict({key: [item[key] for item in items] for key in items[0]})
    out = engine.generate(batch, n=1, temperature=0.0)
    vllm_texts = tokenizer.batch_decode(
        [row[mask.bool()] for row, mask in zip(out["responses"], out["response_mask"])],
        skip_special_tokens=True,
    )

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    enc = tokenizer.pad({"input_ids": [item["prompt_token_ids"] for item in items]}, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(
            **enc, do_sample=False, max_new_tokens=R, pad_token_id=tokenizer.pad_token_id
        )
    hf_texts = tokenizer.batch_decode(generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    # Float32 kernels differ slightly, so a near-tie may resolve differently on a few problems.
    same = sum(v == h for v, h in zip(vllm_texts, hf_texts))
    assert same >= 0.95 * len(items), [(v, h) for v, h in zip(vllm_texts, hf_texts) if v != h][:5]
    assert all("\\boxed{" in text for text in vllm_texts)

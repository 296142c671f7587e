"""The vLLM rollout on a real engine (tiny Qwen2, float32 CPU): padded layout and masks, sample order,
log-probs against a transformers forward, in-place weight sync against transformers greedy decoding,
and the Ray worker shell through a real 2-rank worker group."""

from __future__ import annotations

import pytest
import ray
import torch
from transformers import AutoTokenizer, Qwen2ForCausalLM

from sfpo_rl.bench.full_state import FullStateRolloutWorker
from sfpo_rl.controller import RayWorkerGroup, ResourcePool, WorkerError, init_ray
from sfpo_rl.protocol import Batch
from sfpo_rl.tiny.model import build_model
from sfpo_rl.workers.rollout import RolloutConfig, VLLMRollout

pytestmark = pytest.mark.slow

P, R = 16, 24  # max prompt / response length
CONFIG = dict(
    n=4,
    max_prompt_length=P,
    max_response_length=R,
    dtype="float32",
    kv_cache_gib=0.125,
    max_num_seqs=128,
    max_num_batched_tokens=128,  # several scheduler steps per batch (see test_seeded_batches_...)
    seed=0,
    val_n=2,
    val_temperature=0.6,
)
TEXTS = [
    "Compute 12 + 34 - 5.",
    "The answer is",
    "46 - 5 = 41.",
    "Compute",
    "12 + 34 = 46. 4 - 5",  # exactly max_prompt_length tokens: no padding
    "\\boxed{",
    "x",
    "Compute 1 + 2 + 3 + 4.",
]
# vLLM's float32 CPU kernels vs the transformers eager forward on the same tokens: measured max |diff| 9.5e-7
# over ~750 tokens at temperature 0.7; the bound leaves room for other CPUs' kernel choices.
LOG_PROB_TOL = 1e-4


def prompt_batch(texts: list[str] = TEXTS) -> Batch:
    return Batch.from_dict(
        {
            "raw_prompt": list(texts),
            "ground_truth": [f"gt{i}" for i in range(len(texts))],
            "uid": [f"uid{i}" for i in range(len(texts))],
            "data_source": ["tiny"] * len(texts),
        }
    )


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return VLLMRollout(tiny_model_dir, CONFIG)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def sampled(engine):
    """16 samples per prompt at temperature 2 (near uniform), so some responses end in eos and some are cut."""
    return engine.generate(prompt_batch(), n=16, temperature=2.0)


def hf_model(path, state_dict=None) -> Qwen2ForCausalLM:
    model = Qwen2ForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager")
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.eval()


@torch.no_grad()
def greedy_reference(model: Qwen2ForCausalLM, prompt: list[int], max_new: int, eos: int) -> list[int]:
    """Plain greedy decoding, a full forward per token (no cache): the tokens up to and including eos."""
    ids = list(prompt)
    out: list[int] = []
    for _ in range(max_new):
        token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        out.append(token)
        ids.append(token)
        if token == eos:
            break
    return out


def response_of(out: Batch, row: int) -> list[int]:
    length = int(out["response_mask"][row].sum())
    return out["responses"][row, :length].tolist()


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "option, value",
    [
        ("n", 0),
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("top_p", 0.0),
        ("top_k", 0),
        ("dtype", "fp8"),
        ("max_prompt_length", 0),
        ("gpu_memory_utilization", 1.5),
        ("kv_cache_gib", 0),
        ("sleep_level", 3),
        ("val_n", 0),
        ("enforce_eager", "yes"),
    ],
)
def test_config_errors_name_the_option(option, value):
    with pytest.raises(ValueError, match=rf"rollout\.{option} must be"):
        RolloutConfig(**{option: value})


def test_config_from_mapping_and_omegaconf():
    from omegaconf import OmegaConf

    assert RolloutConfig.from_any(OmegaConf.create({"n": 8, "top_k": 20})) == RolloutConfig(n=8, top_k=20)
    with pytest.raises(ValueError, match=r"rollout\.temprature: unknown option"):
        RolloutConfig.from_any({"temprature": 1.0})


# ---------------------------------------------------------------------------------------------- layout
def test_padding_layout_masks_and_position_ids(sampled, tokenizer):
    n = 16
    assert len(sampled) == len(TEXTS) * n
    for key, width in [("prompts", P), ("responses", R), ("response_mask", R), ("rollout_log_probs", R)]:
        assert sampled[key].shape == (len(sampled), width), key
    for key in ("input_ids", "attention_mask", "position_ids"):
        assert sampled[key].shape == (len(sampled), P + R), key
    assert torch.equal(sampled["input_ids"], torch.cat([sampled["prompts"], sampled["responses"]], dim=1))

    pad = tokenizer.pad_token_id
    for row in range(len(sampled)):
        prompt = tokenizer(TEXTS[row // n], add_special_tokens=False)["input_ids"]
        # prompt: left-padded, real tokens flush right
        assert sampled["prompts"][row].tolist() == [pad] * (P - len(prompt)) + prompt
        mask = sampled["response_mask"][row].tolist()
        length = sum(mask)
        # response: a prefix of ones, padded after it
        assert mask == [1] * length + [0] * (R - length)
        assert sampled["responses"][row, length:].tolist() == [pad] * (R - length)
        assert sampled["attention_mask"][row].tolist() == [0] * (P - len(prompt)) + [1] * len(prompt) + mask
        # HF's left-padding position ids, written out: 0 on left padding, then 0, 1, 2, ... over real tokens
        expected, seen = [], 0
        for m in sampled["attention_mask"][row].tolist():
            expected.append(max(seen - 1 + m, 0))
            seen += m
        assert sampled["position_ids"][row].tolist() == expected
        lp = sampled["rollout_log_probs"][row]
        assert torch.all(lp[:length] < 0) and torch.all(lp[length:] == 0)


def test_eos_kept_in_mask_and_truncated_responses_have_no_eos(sampled, tokenizer):
    eos = tokenizer.eos_token_id
    ended, cut = 0, 0
    for row in range(len(sampled)):
        response = response_of(sampled, row)
        if eos in response:
            # generation stops at the first eos, which is the last masked token
            assert response.index(eos) == len(response) - 1
            ended += 1
        else:
            assert len(response) == R  # no eos: only the length limit stops a response
            cut += 1
    assert ended > 0 and cut > 0, f"need both kinds of rows to test, got {ended} eos-ended and {cut} cut"
    stats = sampled.meta["generation_stats"]
    assert stats["response_tokens"] == int(sampled["response_mask"].sum())
    assert stats["truncated_frac"] == pytest.approx(cut / len(sampled))
    assert sampled.meta["temperature"] == 2.0


def test_samples_in_repeat_interleave_order_with_columns_repeated(sampled):
    n = 16
    for column in ("raw_prompt", "ground_truth", "uid", "data_source"):
        assert list(sampled[column]) == [v for v in prompt_batch()[column] for _ in range(n)]
    for i in range(len(TEXTS)):
        group = sampled["prompts"][i * n : (i + 1) * n]
        assert torch.equal(group, group[:1].expand_as(group))
        # sampled, not copies: the n responses of a prompt are not all equal
        assert len({tuple(response_of(sampled, row)) for row in range(i * n, (i + 1) * n)}) > 1


def test_prompt_token_ids_column_equals_raw_prompt_and_validate_options(engine, tokenizer):
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    # validate=True: the val_* options (2 samples at temperature 0.6); a fixed seed makes the draws repeatable
    from_ids = engine.generate(Batch.from_dict({"prompt_token_ids": ids}), validate=True, seed=7)
    from_text = engine.generate(prompt_batch(), validate=True, seed=7)
    assert len(from_ids) == 2 * len(TEXTS) and from_ids.meta["temperature"] == 0.6
    for key in ("prompts", "responses", "response_mask", "rollout_log_probs"):
        assert torch.equal(from_ids[key], from_text[key]), key
    assert not torch.equal(from_ids["responses"][0::2], from_ids["responses"][1::2])


def test_per_prompt_sampling_seeds_make_samples_independent_of_batch_position(engine):
    texts = TEXTS[:3]
    forward = prompt_batch(texts)
    forward["sampling_seed"] = [100, 200, 300]
    backward = prompt_batch(texts[::-1])
    backward["sampling_seed"] = [300, 200, 100]
    a = engine.generate(forward, n=4, temperature=1.0)
    b = engine.generate(backward, n=4, temperature=1.0)
    for row in range(12):  # prompt i's samples in `a` are prompt (2 - i)'s in `b`
        prompt, sample = divmod(row, 4)
        assert response_of(a, row) == response_of(b, (2 - prompt) * 4 + sample)
    assert len({tuple(response_of(a, r)) for r in range(4)}) > 1  # the n samples of a prompt differ


def test_seeded_batches_larger_than_one_scheduler_step(engine):
    """More prompt tokens than one scheduler step takes (128): vLLM would prefill some prompts in chunks and
    rewind their seeded generators, which CPU generators cannot do; whole-prompt scheduling avoids it."""
    texts = TEXTS * 4
    batch = prompt_batch(texts)
    batch["sampling_seed"] = list(range(0, 8 * len(texts), 8))
    prompt_tokens = 4 * len(texts) * 4  # every prompt has at least 4 tokens and is sampled n=4 times
    assert engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens < prompt_tokens
    out = engine.generate(batch, n=4, temperature=1.0)
    assert len(out) == 4 * len(texts) and int(out["response_mask"].sum()) > 0


def test_bad_generate_inputs_raise_clear_errors(engine):
    with pytest.raises(ValueError, match=r"row 1 has \d+ tokens, more than rollout.max_prompt_length=16"):
        engine.generate(prompt_batch(["short", "a long prompt " * 10]))
    with pytest.raises(ValueError, match="max_tokens=25 must be in"):
        engine.generate(prompt_batch(), max_tokens=R + 1)
    with pytest.raises(ValueError, match="unknown sampling override 'min_p'"):
        engine.generate(prompt_batch(), min_p=0.1)
    with pytest.raises(ValueError, match=r"rollout\.n must be 1 when rollout.temperature is 0"):
        engine.generate(prompt_batch(), n=2, temperature=0.0)
    with pytest.raises(ValueError, match=r"rollout\.top_p must be"):
        engine.generate(prompt_batch(), top_p=2.0)
    with pytest.raises(KeyError, match="'prompt_token_ids' or 'raw_prompt'"):
        engine.generate(Batch.from_dict({"uid": ["a"]}))


def test_empty_chunk_returns_every_column_with_zero_rows(engine, sampled):
    out = engine.generate(prompt_batch()[0:0])
    assert len(out) == 0 and set(out.keys()) == set(sampled.keys())
    assert Batch.concat([out, sampled]).tensors["prompts"].shape == (len(sampled), P)


# ---------------------------------------------------------------------------------------------- log-probs
@torch.no_grad()
def test_rollout_log_probs_match_transformers(engine, tiny_model_dir):
    temperature = 0.7
    out = engine.generate(prompt_batch(), n=4, temperature=temperature)
    model = hf_model(tiny_model_dir)
    logits = model(
        input_ids=out["input_ids"], attention_mask=out["attention_mask"], position_ids=out["position_ids"]
    ).logits[:, P - 1 : -1]  # logits at position t predict token t + 1: the R response tokens

    def gathered(scaled_logits):
        return scaled_logits.log_softmax(-1).gather(-1, out["responses"].unsqueeze(-1)).squeeze(-1)

    mask = out["response_mask"].bool()
    diff = (gathered(logits / temperature) - out["rollout_log_probs"])[mask].abs().max().item()
    untempered = (gathered(logits) - out["rollout_log_probs"])[mask].abs().max().item()
    print(f"\nrollout vs transformers log-prob max |diff| = {diff:.2e} ({int(mask.sum())} tokens)")
    assert diff < LOG_PROB_TOL
    assert untempered > 100 * LOG_PROB_TOL  # the log-probs are of logits / temperature, not the raw logits


# ---------------------------------------------------------------------------------------------- weight sync
@torch.no_grad()
def test_load_weights_changes_outputs_and_matches_transformers_greedy(engine, tiny_model_dir, tokenizer):
    eos = tokenizer.eos_token_id
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    original = hf_model(tiny_model_dir)
    other = build_model(tokenizer, seed=1).eval()  # same shapes, other random weights

    before = engine.generate(prompt_batch(), n=1, temperature=0.0)
    assert before.meta["temperature"] == 1.0  # greedy log-probs are of the unscaled distribution
    assert [response_of(before, i) for i in range(len(TEXTS))] == [
        greedy_reference(original, p, R, eos) for p in prompts
    ]

    stats = engine.load_weights(other.state_dict())
    after = engine.generate(prompt_batch(), n=1, temperature=0.0)
    expected = [greedy_reference(other, p, R, eos) for p in prompts]
    assert [response_of(after, i) for i in range(len(TEXTS))] == expected
    assert not torch.equal(before["responses"], after["responses"])
    state_mb = sum(t.numel() * t.element_size() for t in other.state_dict().values()) / 2**20
    assert stats["load_weights_mb"] == pytest.approx(state_mb)
    print(
        f"\nload_weights: {stats['load_weights_mb']:.2f} MB in {stats['load_weights_s'] * 1e3:.1f} ms "
        f"({stats['load_weights_mb_per_s']:.0f} MB/s); engine start {engine.engine_start_s:.1f} s"
    )

    # a lazy stream works too, and restores the original outputs exactly
    engine.load_weights((name, tensor) for name, tensor in original.state_dict().items())
    restored = engine.generate(prompt_batch(), n=1, temperature=0.0)
    assert torch.equal(restored["responses"], before["responses"])


def test_generation_throughput(engine):
    out = engine.generate(Batch.from_dict({"prompt_token_ids": [[5, 6, 7, 8]] * 64}), n=8, ignore_eos=True)
    stats = out.meta["generation_stats"]
    assert stats["response_tokens"] == 64 * 8 * R
    print(
        f"\ngeneration: {stats['response_tokens']} tokens in {stats['gen_s']:.2f} s ({stats['tokens_per_s']:.0f}/s)"
    )


def test_an_unset_cpu_kv_cache_holds_max_num_seqs_full_length_sequences(tiny_model_dir):
    sized = VLLMRollout(tiny_model_dir, {**CONFIG, "kv_cache_gib": None, "max_num_seqs": 8})
    cache = sized.llm.llm_engine.vllm_config.cache_config
    # 8 sequences of P + R = 40 tokens, each rounded up to a 256-token block: vLLM's blocks hold them all, and
    # the cache is that, not vLLM's 4 GiB CPU default.
    assert 8 * (P + R) <= cache.num_gpu_blocks * cache.block_size <= 8 * 256
    out = sized.generate(Batch.from_dict({"prompt_token_ids": [[5, 6, 7, 8]] * 8}), n=1, ignore_eos=True)
    assert out["response_mask"].sum() == 8 * R


# ---------------------------------------------------------------------------------------------- Ray shell
@pytest.fixture(scope="module")
def rollout_group(tiny_model_dir):
    started = not ray.is_initialized()
    init_ray()
    group = RayWorkerGroup(
        ResourcePool([2], name="rollout_test"), FullStateRolloutWorker, "rollout", tiny_model_dir, CONFIG
    )
    yield group
    group.shutdown()
    if started:  # later modules start Ray with their own options
        ray.shutdown()


@torch.no_grad()
def test_worker_group_generates_split_batch_and_syncs_weights(rollout_group, tiny_model_dir, tokenizer):
    eos = tokenizer.eos_token_id
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    texts = TEXTS[:7]  # uneven split: rank 0 gets 4 prompts, rank 1 gets 3

    sampled = rollout_group.generate(prompt_batch(texts), n=3)
    assert len(sampled) == 3 * len(texts)
    assert list(sampled["uid"]) == [f"uid{i}" for i in range(len(texts)) for _ in range(3)]
    for row in range(len(sampled)):
        prompt = prompts[row // 3]
        assert sampled["prompts"][row, P - len(prompt) :].tolist() == prompt

    other = build_model(tokenizer, seed=1).eval()
    stats = rollout_group.load_weights(ray.put(other.state_dict()))
    assert len(stats) == 2 and all(s["load_weights_mb"] > 0 for s in stats)
    greedy = rollout_group.generate(prompt_batch(texts), n=1, temperature=0.0)
    assert [response_of(greedy, i) for i in range(len(texts))] == [
        greedy_reference(other, p, R, eos) for p in prompts[: len(texts)]
    ]
    # CPU: sleep / wake_up are logged no-ops on every rank; the engines keep their (synced) weights
    rollout_group.sleep()
    rollout_group.wake_up()
    again = rollout_group.generate(prompt_batch(texts), n=1, temperature=0.0)
    assert torch.equal(again["responses"], greedy["responses"])


def test_failed_load_weights_reaches_the_driver_and_blocks_the_engine(rollout_group):
    # Last test on the group: vLLM cannot undo a half-done reload (its rotary caches are shared per process).
    with pytest.raises(WorkerError, match=r"rollout worker rank \d .*no module or parameter named 'foo'"):
        rollout_group.load_weights({"model.foo.weight": torch.zeros(3)})
    with pytest.raises(
        WorkerError, match="undefined after a failed load_weights.*restart the rollout worker"
    ):
        rollout_group.generate(prompt_batch())

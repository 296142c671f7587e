"""The streamed weight sync without Ray or vLLM: how a state dict is cut into buckets of whole layers, how the
driver moves buckets (split) or asks the colocated engines to stream, the colocated processes switched between
generation and training only when the phase changes, and the engine's sleep bookkeeping."""

from __future__ import annotations

import pytest
import torch

from sfpo_rl.protocol import Batch
from sfpo_rl.trainer.worker_groups import WorkerGroups, describe_placement
from sfpo_rl.workers.colocated import OptimizerOffload
from sfpo_rl.workers.rollout import VLLMRollout
from sfpo_rl.workers.rollout_config import RolloutConfig
from sfpo_rl.workers.weight_sync import plan_buckets

LAYERS = ["model.layers.0.", "model.layers.1.", "model.layers.2."]


def layer_of(name: str) -> str:
    return next((p for p in LAYERS if name.startswith(p)), name)


def entries(*layer_sizes: int) -> list[tuple[str, int]]:
    """The embedding (10 bytes), two weights per layer of the given sizes (each half), the LM head (10)."""
    out = [("model.embed_tokens.weight", 10)]
    for i, size in enumerate(layer_sizes):
        out += [(f"model.layers.{i}.q.weight", size // 2), (f"model.layers.{i}.k.weight", size - size // 2)]
    return [*out, ("lm_head.weight", 10)]


def names(plan: list[list[str]]) -> list[list[str]]:
    """Buckets as layer labels: 'embed', 'L0', 'L1', ..., 'head' (one label per layer, not per weight)."""

    def label(name: str) -> str:
        if name.startswith("model.layers."):
            return f"L{name.split('.')[2]}"
        return "embed" if "embed" in name else "head"

    return [list(dict.fromkeys(label(n) for n in bucket)) for bucket in plan]


def test_whole_layers_are_packed_in_order_up_to_the_bucket_size():
    plan = plan_buckets(entries(40, 40, 40), layer_of, bucket_bytes=100)
    assert names(plan) == [["embed", "L0", "L1"], ["L2", "head"]]  # 10+40+40 = 90; 90+40 > 100
    assert [n for bucket in plan for n in bucket] == [
        n for n, _ in entries(40, 40, 40)
    ]  # nothing lost or moved


def test_a_layer_larger_than_a_bucket_travels_alone_and_is_never_split():
    plan = plan_buckets(entries(30, 250, 30), layer_of, bucket_bytes=100)
    assert names(plan) == [["embed", "L0"], ["L1"], ["L2", "head"]]
    assert names(plan_buckets(entries(30, 30), layer_of, bucket_bytes=1)) == [
        ["embed"],
        ["L0"],
        ["L1"],
        ["head"],
    ]


def test_one_bucket_holds_everything_when_it_fits():
    assert names(plan_buckets(entries(40, 40), layer_of, bucket_bytes=10**9)) == [
        ["embed", "L0", "L1", "head"]
    ]


# ------------------------------------------------------------------ the driver's side (fake worker groups)


class Call:
    """A pending group call: `rank0_ref()` stands for the object-store reference, `get()` for the wait."""

    def __init__(self, log: list, value):
        self.log, self.value = log, value

    def rank0_ref(self):
        return self.value

    def get(self):
        self.log.append("actor.get")
        return [self.value, None]


class FakeMethod:
    def __init__(self, log: list, name: str, result):
        self.log, self.name, self.result = log, name, result

    def __call__(self, *args, **kwargs):
        self.log.append((self.name, args))
        return self.result(*args) if callable(self.result) else self.result

    def future(self, *args):
        self.log.append((self.name, args))
        return Call(self.log, self.result(*args))


class FakeGroup:
    def __init__(self, log: list, role: str, pids: list[int], **methods):
        self.role = role
        self.worker_info = [{"ip": "10.0.0.1", "node_id": "abcdef0123", "pid": pid} for pid in pids]
        for name, result in methods.items():
            setattr(self, name, FakeMethod(log, f"{role}.{name}", result))


def test_split_sync_moves_one_bucket_at_a_time_from_actor_rank0_to_the_engines():
    log: list = []
    actor = FakeGroup(log, "actor", [1, 2], weight_bucket=lambda index, mb, dtype, adapter: f"bucket{index}")
    load = {"load_weights_s": 0.5, "load_weights_mb": 2.0, "load_weights_tensors": 3.0, "buckets": 3.0}
    rollout = FakeGroup(log, "rollout", [3], load_bucket=lambda ref: [dict(load, ref=ref)])
    groups = WorkerGroups(actor=actor, rollout=rollout, reward=None, sync_bucket_mb=64, sync_dtype="bfloat16")
    stats = groups.sync_weights()
    assert [entry for entry in log if entry != "actor.get"] == [
        item
        for i in range(3)
        for item in (
            ("actor.weight_bucket", (i, 64, "bfloat16", False)),
            ("rollout.load_bucket", (f"bucket{i}",)),
        )
    ]
    assert log.count("actor.get") == 3  # each gather is waited for before the next bucket
    assert stats == {
        "sync/load_weights_s": 1.5,
        "sync/load_weights_mb": 6.0,
        "sync/load_weights_tensors": 9.0,
        "sync/buckets": 3.0,
        "sync/load_weights_mb_per_s": 4.0,
    }


def colocated_groups(log: list) -> WorkerGroups:
    stats = {"load_weights_s": 0.25, "load_weights_mb": 1.0, "load_weights_tensors": 4.0, "buckets": 2.0}
    rollout = FakeGroup(
        log,
        "rollout",
        [1, 2],
        generate=lambda batch, **kw: f"rollouts of {batch}",
        prepare_generation=None,
        prepare_training=None,
        sync_weights=[stats, dict(stats, load_weights_s=9.0)],
    )
    return WorkerGroups(actor=FakeGroup(log, "actor", [1, 2]), rollout=rollout, reward=None, colocated=True)


def test_colocated_processes_switch_phase_only_when_it_changes():
    log: list = []
    groups = colocated_groups(log)
    assert groups.generate("prompts") == "rollouts of prompts"
    groups.generate("val")  # validation right after: the engines are awake already
    groups.to_training()
    groups.to_training()
    groups.generate("next")
    assert [entry[0] for entry in log] == [
        "rollout.prepare_generation",
        "rollout.generate",
        "rollout.generate",
        "rollout.prepare_training",
        "rollout.prepare_generation",
        "rollout.generate",
    ]
    assert groups.restartable_roles == ("reward",)  # rollout shares the actor's processes


def test_colocated_sync_asks_every_rank_to_stream_and_reports_rank0():
    groups = colocated_groups([])
    assert groups.sync_weights() == {
        "sync/load_weights_s": 0.25,
        "sync/load_weights_mb": 1.0,
        "sync/load_weights_tensors": 4.0,
        "sync/buckets": 2.0,
        "sync/load_weights_mb_per_s": 4.0,
    }


def test_split_placement_never_switches_phases_and_restarts_engines():
    log: list = []
    rollout = FakeGroup(log, "rollout", [3], generate=lambda batch, **kw: batch)
    groups = WorkerGroups(actor=FakeGroup(log, "actor", [1, 2]), rollout=rollout, reward=None)
    groups.generate("prompts")
    groups.to_training()
    assert [entry[0] for entry in log] == ["rollout.generate"]
    assert groups.restartable_roles == ("rollout", "reward", "ref")


def test_placement_lines_put_colocated_roles_on_one_line():
    log: list = []
    lines = describe_placement(
        [FakeGroup(log, "actor", [1, 2]), FakeGroup(log, "rollout", [1, 2]), FakeGroup(log, "reward", [7])]
    )
    assert lines == [
        "actor+rollout: node 10.0.0.1/abcdef01 ranks [0, 1]",
        "reward: node 10.0.0.1/abcdef01 ranks [0]",
    ]


# ------------------------------------------------------------------ the engine's sleep bookkeeping


class FakeLLM:
    def __init__(self):
        self.calls: list = []

    def sleep(self, level: int) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str]) -> None:
        self.calls.append(("wake_up", tags))

    def collective_rpc(self, method: str, kwargs: dict) -> None:
        self.calls.append((method, [name for name, _ in kwargs["weights_iterator"]]))

    def reset_prefix_cache(self) -> None:
        pass


def engine(sleep_enabled: bool, sleep_level: int = 2) -> VLLMRollout:
    rollout = VLLMRollout.__new__(VLLMRollout)  # only the sleep bookkeeping; no engine
    rollout.config, rollout.llm = RolloutConfig(sleep_level=sleep_level), FakeLLM()
    rollout._sleep_enabled, rollout._asleep, rollout.weights_discarded = sleep_enabled, set(), False
    rollout._failed_load = None
    return rollout


def test_sleep_then_wake_the_weights_for_a_sync_and_the_rest_for_generation():
    rollout = engine(sleep_enabled=True)
    rollout.wake_up()  # awake already: nothing to do
    rollout.sleep()
    rollout.sleep()  # asleep already
    rollout.wake_up(["weights"])  # load_weights: the KV cache stays released
    rollout.wake_up()  # generate: only what still sleeps
    assert rollout.llm.calls == [("sleep", 2), ("wake_up", ["weights"]), ("wake_up", ["kv_cache"])]


def test_a_level_2_sleep_discards_the_weights_until_a_complete_load():
    rollout = engine(sleep_enabled=True, sleep_level=2)
    rollout.sleep()
    with pytest.raises(RuntimeError, match="sleep_level=2, which discards its weights"):
        rollout.generate(Batch.from_dict({"raw_prompt": ["x"]}))
    rollout.load_weights({"model.layers.0.w": torch.ones(2)}, complete=False)  # one bucket: still incomplete
    assert rollout.weights_discarded
    rollout.load_weights({"model.layers.0.w": torch.ones(2), "lm_head.weight": torch.ones(2)})
    assert not rollout.weights_discarded
    assert rollout.llm.calls[1:] == [
        ("wake_up", ["weights"]),
        ("reload_weights", ["model.layers.0.w"]),
        ("reload_weights", ["model.layers.0.w", "lm_head.weight"]),
    ]
    level1 = engine(sleep_enabled=True, sleep_level=1)
    level1.sleep()
    assert not level1.weights_discarded  # level 1 keeps them in host memory


def test_without_sleep_mode_sleep_and_wake_are_no_ops():
    rollout = engine(sleep_enabled=False)  # CPU, or rollout.free_cache_engine=false
    rollout.sleep()
    rollout.wake_up()
    assert rollout.llm.calls == []


def test_optimizer_offload_leaves_host_resident_state_where_it_is():
    """On CPU the state is in host memory already: offload and restore keep the very same tensors."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param])
    param.grad = torch.ones(3)
    optimizer.step()
    state = optimizer.state[param]
    before = {k: v for k, v in state.items()}
    offload = OptimizerOffload(optimizer)
    offload.offload()
    offload.restore()
    assert all(state[k] is v for k, v in before.items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: on CPU there is nothing to move")
def test_optimizer_offload_moves_device_state_to_the_host_and_back():
    param = torch.nn.Parameter(torch.ones(3, device="cuda"))
    optimizer = torch.optim.Adam([param])
    param.grad = torch.ones(3, device="cuda")
    optimizer.step()
    offload = OptimizerOffload(optimizer)
    offload.offload()
    state = optimizer.state[param]
    assert state["exp_avg"].device.type == "cpu" and state["step"].device.type == "cpu"
    offload.restore()
    assert state["exp_avg"].device.type == "cuda" and state["step"].device.type == "cpu"

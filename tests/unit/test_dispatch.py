"""Split/collect rules of the worker-group dispatch modes, without Ray."""

import pytest
import torch

from sfpo_rl.controller.dispatch import (
    Dispatch,
    MethodSpec,
    collect_results,
    plan_calls,
    register,
    registered_methods,
    take_chunk,
)
from sfpo_rl.protocol import Batch

DP = MethodSpec(Dispatch.DP_SPLIT)
ALL = MethodSpec(Dispatch.ALL)
RANK0 = MethodSpec(Dispatch.RANK0)


def _rows(n: int) -> Batch:
    return Batch.from_dict(
        {"x": torch.arange(n), "tag": [f"r{i}" for i in range(n)]}, meta={"temperature": 1.0}
    )


@pytest.mark.parametrize("n, world", [(7, 3), (6, 3), (2, 3), (0, 2), (5, 1)])
def test_dp_split_chunks_match_batch_split_and_keep_order(n, world):
    calls = plan_calls("m", DP, world, (_rows(n), "same"), {"k": 1})
    assert [c.rank for c in calls] == list(range(world))
    chunks = [c.args[0] for c in calls]
    expected = _rows(n).split(world)
    assert [len(c) for c in chunks] == [len(e) for e in expected] == Batch.chunk_sizes(n, world)
    for got, want in zip(chunks, expected):
        assert torch.equal(got["x"], want["x"]) and list(got["tag"]) == list(want["tag"])
    assert all(c.args[1:] == ("same",) and c.kwargs == {"k": 1} and c.chunk is None for c in calls)
    joined = collect_results(DP, chunks)
    assert joined["x"].tolist() == list(range(n)) and list(joined["tag"]) == [f"r{i}" for i in range(n)]
    assert joined.meta == {"temperature": 1.0}


def test_dp_split_lists_and_per_rank_results():
    calls = plan_calls("m", DP, 3, (list("abcdefg"),), {})
    assert [c.args[0] for c in calls] == [["a", "b", "c"], ["d", "e"], ["f", "g"]]
    assert collect_results(DP, [c.args[0] for c in calls]) == list("abcdefg")
    metrics = [{"loss": 1.0}, {"loss": 2.0}]
    assert collect_results(DP, metrics) == metrics  # not Batch, not list: one result per rank


def test_dp_split_of_a_remote_ref_is_left_to_the_workers():
    ref = object()
    calls = plan_calls("m", DP, 2, (ref, 5), {}, is_remote_ref=lambda x: x is ref)
    assert [(c.args, c.chunk) for c in calls] == [((ref, 5), (0, 2)), ((ref, 5), (1, 2))]
    # what each worker then keeps: the same rows the driver-side split gives
    assert [take_chunk(list(range(5)), i, 2) for i in range(2)] == [[0, 1, 2], [3, 4]]


def test_all_and_rank0_plans_and_results():
    calls = plan_calls("m", ALL, 3, (1,), {"a": 2})
    assert [(c.rank, c.args, c.kwargs) for c in calls] == [(r, (1,), {"a": 2}) for r in range(3)]
    assert collect_results(ALL, [_rows(1), _rows(1)])[1]["x"].tolist() == [0]  # ALL never concatenates
    calls = plan_calls("m", RANK0, 3, (1,), {})
    assert [c.rank for c in calls] == [0]
    assert collect_results(RANK0, ["only"]) == "only"


def test_dp_split_rejects_missing_or_unsplittable_data():
    with pytest.raises(TypeError, match="'update' is registered DP_SPLIT: pass the data"):
        plan_calls("update", DP, 2, (), {"batch": _rows(2)})
    with pytest.raises(TypeError, match="got dict"):
        plan_calls("update", DP, 2, ({"x": 1},), {})


def test_register_marks_methods_and_validates_mode():
    class Base:
        @register(dispatch="dp_split")
        def update(self, batch):
            return batch

    class Child(Base):
        @register(Dispatch.RANK0, blocking=False)
        def save(self):
            pass

        def helper(self):
            pass

    assert registered_methods(Child) == {
        "update": MethodSpec(Dispatch.DP_SPLIT),
        "save": MethodSpec(Dispatch.RANK0, blocking=False),
    }
    with pytest.raises(ValueError, match="unknown dispatch mode"):
        register("split")

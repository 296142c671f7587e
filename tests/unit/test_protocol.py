import pickle

import numpy as np
import pytest
import torch

from sfpo_rl.protocol import Batch, BatchError


def make(n=5):
    return Batch.from_dict(
        {
            "ids": torch.arange(n * 3).view(n, 3),
            "mask": torch.ones(n, 3, dtype=torch.bool),
            "prompt": [f"p{i}" for i in range(n)],
            "extra": [{"i": i} for i in range(n)],
        },
        meta={"temperature": 1.0},
    )


def test_columns_are_routed_and_sized():
    b = make()
    assert len(b) == 5
    assert set(b.tensors) == {"ids", "mask"} and set(b.non_tensors) == {"prompt", "extra"}
    assert b.non_tensors["extra"].dtype == object and b["extra"][2] == {"i": 2}


def test_mismatched_batch_sizes_raise_with_names():
    with pytest.raises(BatchError, match="ids=2.*prompt=3"):
        Batch.from_dict({"ids": torch.zeros(2, 1), "prompt": ["a", "b", "c"]})
    b = make()
    with pytest.raises(BatchError, match="'other' has batch size 4, the batch has 5"):
        b["other"] = torch.zeros(4)
    assert "other" not in b
    with pytest.raises(BatchError, match="scalar"):
        b["s"] = torch.tensor(1.0)


def test_setitem_replaces_existing_column():
    b = make()
    b["ids"] = ["a"] * 5  # a tensor column may become a non-tensor one
    assert "ids" in b.non_tensors and "ids" not in b.tensors


@pytest.mark.parametrize("n_chunks", [1, 2, 3, 5])
def test_split_concat_round_trip(n_chunks):
    b = make(7)
    chunks = b.split(n_chunks)
    assert [len(c) for c in chunks] == Batch.chunk_sizes(7, n_chunks)
    assert max(len(c) for c in chunks) - min(len(c) for c in chunks) <= 1
    assert len(chunks[0]) >= len(chunks[-1])  # first chunks take the remainder
    back = Batch.concat(chunks)
    assert torch.equal(back["ids"], b["ids"]) and list(back["prompt"]) == list(b["prompt"])
    assert back.meta == b.meta


def test_chunk_sizes_rule():
    assert Batch.chunk_sizes(7, 3) == [3, 2, 2]
    assert Batch.chunk_sizes(2, 4) == [1, 1, 0, 0]
    with pytest.raises(BatchError):
        Batch.chunk_sizes(3, 0)


def test_split_by_size_micro_batches():
    sizes = [len(c) for c in make(7).split_by_size(3)]
    assert sizes == [3, 3, 1]


def test_concat_rejects_different_columns():
    a, b = make(2), make(2).select(keys=["ids"])
    with pytest.raises(BatchError, match="columns"):
        Batch.concat([a, b])


def test_repeat_interleave_order():
    b = make(3).repeat_interleave(2)
    assert b["ids"][:, 0].tolist() == [0, 0, 3, 3, 6, 6]
    assert list(b["prompt"]) == ["p0", "p0", "p1", "p1", "p2", "p2"]


def test_index_forms():
    b = make(5)
    assert b[1]["ids"].tolist() == [[3, 4, 5]]
    assert list(b[1:3]["prompt"]) == ["p1", "p2"]
    assert list(b[[4, 0]]["prompt"]) == ["p4", "p0"]
    assert list(b[torch.tensor([True, False, False, False, True])]["prompt"]) == ["p0", "p4"]
    assert b[-1]["ids"].tolist() == [[12, 13, 14]]


def test_union_merges_and_detects_conflicts():
    b = make(3)
    other = Batch.from_dict({"ids": b["ids"].clone(), "score": torch.ones(3)}, meta={"step": 1})
    u = b.union(other)
    assert set(u.keys()) == {"ids", "mask", "prompt", "extra", "score"} and u.meta == {
        "temperature": 1.0,
        "step": 1,
    }
    with pytest.raises(BatchError, match="conflict on tensor 'ids'"):
        b.union(Batch.from_dict({"ids": b["ids"] + 1}))
    with pytest.raises(BatchError, match="conflict on column 'prompt'"):
        b.union(Batch.from_dict({"prompt": ["x", "y", "z"]}))
    with pytest.raises(BatchError, match="conflict on meta"):
        b.union(Batch(meta={"temperature": 0.5}))


def test_select_and_pop():
    b = make(3)
    s = b.select(keys=["ids"], non_tensor_keys=[])
    assert s.keys() == ["ids"]
    with pytest.raises(KeyError, match="no column 'nope'"):
        b.select(keys=["nope"])
    popped = b.pop(["mask", "prompt"])
    assert set(popped.keys()) == {"mask", "prompt"} and set(b.keys()) == {"ids", "extra"}


def test_pickle_round_trip_including_bf16():
    b = make(4)
    b["w"] = torch.randn(4, 2).to(torch.bfloat16)
    back = pickle.loads(pickle.dumps(b))
    assert back["w"].dtype == torch.bfloat16 and torch.equal(back["w"], b["w"])
    assert torch.equal(back["ids"], b["ids"]) and list(back["extra"]) == list(b["extra"])
    back["ids"][0, 0] = 99  # received tensors are writable
    assert b["ids"][0, 0] == 0


def test_to_device_keeps_columns():
    b = make(2).to("cpu")
    assert b["ids"].device.type == "cpu" and isinstance(b["prompt"], np.ndarray)

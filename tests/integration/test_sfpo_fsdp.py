"""reposition_ on the local shards of a 2-rank FSDP2 model (gloo) equals the single-process result."""

import pytest
import torch
from actor_helpers import run_ranks
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from sfpo_rl.algorithms.sfpo import displacement_norm, reposition_, snapshot_

pytestmark = pytest.mark.slow  # 2 spawned torch.distributed ranks

ALPHA = 0.8


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def reference():
    fast, slow = make_model(1), make_model(0)
    with torch.no_grad():
        for f, s in zip(fast.parameters(), slow.parameters()):
            f.copy_(s + ALPHA * (f - s))
    return {k: v.clone() for k, v in fast.state_dict().items()}


def _rank(rank, out_path):
    slow_model, fast_model = make_model(0), make_model(1)
    for layer in fast_model[0], fast_model[2]:
        fully_shard(layer)
    fully_shard(fast_model)
    # The slow copy: this rank's piece of the seed-0 weights, laid out like the fast model's shards.
    slow_state = slow_model.state_dict()
    shards = [p.to_local() for p in fast_model.parameters()]
    assert all(isinstance(p, DTensor) for p in fast_model.parameters())
    slow = []
    for (name, p), shard in zip(fast_model.named_parameters(), shards):
        full = slow_state[name]
        dim0 = p.placements[0].dim
        piece = full.chunk(p.device_mesh.size(), dim=dim0)[rank]
        assert piece.shape == shard.shape
        slow.append(snapshot_([piece])[0])
    local_norm_before = displacement_norm(shards, slow)
    reposition_(shards, slow, ALPHA)
    local_norm_after = displacement_norm(shards, slow)
    assert torch.allclose(local_norm_after, ALPHA * local_norm_before)
    full = {k: v.full_tensor() for k, v in fast_model.state_dict().items()}
    if rank == 0:
        torch.save(full, out_path)


def test_reposition_on_fsdp2_shards_matches_single_process(tmp_path):
    out = tmp_path / "full.pt"
    run_ranks(_rank, str(out))
    got, want = torch.load(out), reference()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-7), k

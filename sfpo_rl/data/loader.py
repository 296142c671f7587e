"""A seeded, resumable prompt loader: per-epoch permutations and a position that goes into checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from sfpo_rl.data.dataset import PromptDataset
from sfpo_rl.protocol import Batch


class PromptLoader:
    """Batches of prompts as `Batch`es with non-tensor columns raw_prompt, prompt_token_ids, ground_truth,
    data_source and extra_info (no tensors: the rollout pads prompts itself; the trainer adds uids).

    Epoch e visits the prompts in the order `permutation(seed, e)`, so (epoch, position) in `state_dict()`
    fully determines what comes next: a loader restored with `load_state_dict` yields the same batches.
    `iter(loader)` yields the rest of the current epoch, then moves to the next epoch; `next_batch()` rolls
    over epochs by itself.
    """

    def __init__(
        self,
        dataset: PromptDataset,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"data batch_size must be an integer >= 1, got {batch_size!r}")
        if drop_last and len(dataset) < batch_size:
            raise ValueError(
                f"the dataset has {len(dataset)} prompts, fewer than one batch of {batch_size} (drop_last=True)"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # batches already taken from this epoch
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation) cache

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        while self.position < len(self):
            yield self.next_batch()
        self.epoch += 1
        self.position = 0

    def next_batch(self) -> Batch:
        if self.position >= len(self):
            self.epoch += 1
            self.position = 0
        start = self.position * self.batch_size
        indices = self._permutation()[start : start + self.batch_size]
        self.position += 1
        items = [self.dataset[int(i)] for i in indices]
        return Batch.from_dict({key: [item[key] for item in items] for key in items[0]})

    def _permutation(self) -> np.ndarray:
        if self._order is None or self._order[0] != self.epoch:
            n = len(self.dataset)
            order = (
                np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch])).permutation(n)
                if self.shuffle
                else np.arange(n)
            )
            self._order = (self.epoch, order)
        return self._order[1]

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_prompts": len(self.dataset),
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume; refuses a state saved with a different dataset size, batch size, seed or shuffle."""
        mine = self.state_dict()
        for key in ("seed", "shuffle", "num_prompts", "batch_size"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"cannot resume the data loader: checkpoint has {key}={state.get(key)!r}, this run has "
                    f"{mine[key]!r}; the same data files and data options are needed to continue the same order"
                )
        if not 0 <= state["position"] <= len(self):
            raise ValueError(
                f"cannot resume the data loader: position {state['position']} outside 0..{len(self)}"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

"""The packed (padding-free) layout: hand-worked indices, and a packed forward through a plain transformers model
(block-diagonal attention from the position ids) giving the padded forward's log-probs."""

import sys
from pathlib import Path

import pytest
import torch
from bound_audit import below

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))  # the shared actor test helpers
from actor_helpers import make_batch, plain_log_probs, plain_model  # noqa: E402

from sfpo_rl.algorithms.packing import pack  # noqa: E402


def test_layout_hand_worked():
    # Prompt width 3, response width 2. Row 0: prompt [7, 8], response [9]; row 1: prompt [5, 6, 4], response
    # [3, 2].
    input_ids = torch.tensor([[0, 7, 8, 9, 0], [5, 6, 4, 3, 2]])
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    positions = torch.tensor([[0, 0, 1, 2, 2], [0, 1, 2, 3, 4]])
    layout = pack(input_ids, mask, positions, response_width=2)
    assert layout.input_ids.tolist() == [[7, 8, 9, 5, 6, 4, 3, 2]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]
    # Token 9 is predicted by 8 (packed index 1); 3 by 4 (index 5); 2 by 3 (index 6).
    assert layout.predict_index.tolist() == [1, 5, 6]
    assert layout.rows.tolist() == [0, 1, 1] and layout.cols.tolist() == [0, 0, 1]
    assert layout.labels.tolist() == [9, 3, 2]
    values = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    out = layout.unpack(values, n_rows=2, response_width=2)
    assert out.tolist() == [[1.0, 0.0], [2.0, 3.0]]
    out.sum().backward()
    assert values.grad.tolist() == [1.0, 1.0, 1.0]


def test_position_ids_that_do_not_count_real_tokens_are_refused():
    input_ids = torch.tensor([[1, 2, 3, 4]])
    mask = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="actor.batching.forward_layout=padded"):
        pack(input_ids, mask, torch.tensor([[5, 6, 7, 8]]), response_width=2)


def test_packed_forward_equals_padded_forward(tiny_model_dir):
    model = plain_model(tiny_model_dir)
    batch = make_batch(model.config.vocab_size, model.config.pad_token_id, seed=0, temperature=1.0)
    with torch.no_grad():
        padded, _ = plain_log_probs(model, batch)
        layout = pack(batch["input_ids"], batch["attention_mask"], batch["position_ids"], 8)
        # No cache: transformers reads packed sequences from the position ids only in a training-style call.
        logits = model(
            input_ids=layout.input_ids,
            position_ids=layout.position_ids,
            use_cache=False,
            logits_to_keep=layout.predict_index,
        ).logits[0]
        picked = torch.log_softmax(logits, -1).gather(-1, layout.labels[:, None])[:, 0]
        packed = layout.unpack(picked, len(batch), 8)
    real = batch["attention_mask"][:, -8:].bool()
    assert layout.input_ids.shape[1] == int(batch["attention_mask"].sum())  # no padding computed
    err = (packed - padded)[real].abs().max().item()
    print(f"\npacked vs padded log-probs: max |diff| {err:.2e}")
    assert below(err, 1e-5)
    assert (packed[~real] == 0).all()
    # Without the per-row positions the rows would attend to each other: the check above is not vacuous.
    with torch.no_grad():
        leaky = model(
            input_ids=layout.input_ids,
            position_ids=torch.arange(layout.input_ids.shape[1])[None],
            use_cache=False,
            logits_to_keep=layout.predict_index,
        ).logits[0]
    assert (leaky - logits).abs().max().item() > 1e-3

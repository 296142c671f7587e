"""Policy losses (PPO-clip, GSPO) and aggregation against plain per-token python references and hand-worked
examples; the registry that picks a loss by name."""

import math

import pytest
import torch

from sfpo_rl.algorithms.kl import kl_penalty
from sfpo_rl.algorithms.logprob import entropy_from_logits, log_probs_from_logits
from sfpo_rl.algorithms.policy_loss import (
    LOSS_AGG_MODES,
    LossInputs,
    agg_loss,
    get_policy_loss,
    gspo_loss,
    policy_losses,
    ppo_clip_loss,
    register_policy_loss,
)


def random_inputs(seed=0, b=6, t=7):
    g = torch.Generator().manual_seed(seed)
    log_probs = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    old = log_probs + 0.4 * torch.randn(b, t, generator=g, dtype=torch.float64)
    adv = torch.randn(b, 1, generator=g, dtype=torch.float64).expand(b, t).clone()
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t) < lengths[:, None]).double()
    return log_probs, old, adv, mask


def reference_token_loss(lp, old, a, low, high, c):
    ratio = math.exp(lp - old)
    loss = max(-a * ratio, -a * min(max(ratio, 1 - low), 1 + high))
    if c is not None and a < 0:
        loss = min(loss, -a * c)
    return loss


@pytest.mark.parametrize("c", [None, 3.0])
def test_ppo_clip_matches_per_token_reference(c):
    lp, old, adv, mask = random_inputs()
    low, high = 0.2, 0.28
    loss, metrics = ppo_clip_loss(
        LossInputs(lp, old, adv, mask, clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=c)
    )
    total, count, clipped = 0.0, 0, 0
    for i in range(lp.shape[0]):
        for j in range(lp.shape[1]):
            if mask[i, j]:
                li = reference_token_loss(lp[i, j].item(), old[i, j].item(), adv[i, j].item(), low, high, c)
                total += li
                count += 1
                r = math.exp(lp[i, j].item() - old[i, j].item())
                clipped += -adv[i, j].item() * min(max(r, 1 - low), 1 + high) > -adv[i, j].item() * r
    assert loss.item() == pytest.approx(total / count, rel=1e-12)
    assert metrics["clipfrac"].item() == pytest.approx(clipped / count)
    assert 0 < clipped < count  # the inputs exercise both branches


def test_dual_clip_bounds_the_loss_of_negative_advantages():
    lp = torch.tensor([[3.0]])  # ratio e^3 ~ 20
    old = torch.zeros(1, 1)
    mask = torch.ones(1, 1)
    plain, _ = ppo_clip_loss(LossInputs(lp, old, torch.tensor([[-1.0]]), mask))
    dual, _ = ppo_clip_loss(LossInputs(lp, old, torch.tensor([[-1.0]]), mask, clip_ratio_c=3.0))
    assert plain.item() == pytest.approx(math.exp(3))
    assert dual.item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        ppo_clip_loss(LossInputs(lp, old, torch.tensor([[-1.0]]), mask, clip_ratio_c=0.5))


def test_gradient_is_zero_exactly_where_clipped():
    lp, old, adv, mask = random_inputs(seed=1)
    lp = lp.clone().requires_grad_(True)
    loss, _ = ppo_clip_loss(LossInputs(lp, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.2))
    loss.backward()
    ratio = torch.exp(lp.detach() - old)
    clipped = ((adv > 0) & (ratio > 1.2)) | ((adv < 0) & (ratio < 0.8))
    assert clipped[mask.bool()].any() and (~clipped)[mask.bool()].any()
    assert torch.all(lp.grad[clipped] == 0)
    assert torch.all(lp.grad[~clipped & mask.bool()] != 0)
    assert torch.all(lp.grad[~mask.bool()] == 0)


def reference_agg(values, mask, mode):
    rows = []
    for i in range(values.shape[0]):
        vals = [values[i, j].item() for j in range(values.shape[1]) if mask[i, j]]
        rows.append(vals)
    if mode == "token-mean":
        flat = [v for r in rows for v in r]
        return sum(flat) / len(flat)
    if mode == "seq-mean-token-sum":
        return sum(sum(r) for r in rows) / len(rows)
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in rows) / len(rows)
    return sum(sum(r) for r in rows) / (len(rows) * values.shape[1])


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_aggregation_modes_match_reference(mode):
    values, _, _, mask = random_inputs(seed=2)
    assert agg_loss(values, mask, mode).item() == pytest.approx(reference_agg(values, mask, mode), rel=1e-12)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_micro_batch_accumulation_equals_full_batch_gradient(mode):
    """4 micro-batches, each normalised by the GLOBAL token / sequence counts: summed gradients equal the
    gradient of the full-batch loss (token-mean would NOT if each micro-batch used its own token count)."""
    lp, old, adv, mask = random_inputs(seed=3, b=8, t=9)
    full_lp = lp.clone().requires_grad_(True)
    ppo_clip_loss(LossInputs(full_lp, old, adv, mask, loss_agg_mode=mode))[0].backward()

    micro_lp = lp.clone().requires_grad_(True)
    num_tokens, num_seqs = mask.sum(), mask.shape[0]
    for rows in torch.arange(8).split(2):
        loss, _ = ppo_clip_loss(
            LossInputs(
                micro_lp[rows],
                old[rows],
                adv[rows],
                mask[rows],
                loss_agg_mode=mode,
                num_tokens=num_tokens,
                num_seqs=num_seqs,
            )
        )
        loss.backward()
    assert torch.allclose(micro_lp.grad, full_lp.grad, atol=1e-6, rtol=0)


def test_per_micro_batch_normalisation_would_differ():
    """The property above is not vacuous: uneven lengths make per-micro token means a different objective."""
    lp, old, adv, mask = random_inputs(seed=3, b=8, t=9)
    full = ppo_clip_loss(LossInputs(lp, old, adv, mask))[0]
    naive = (
        sum(ppo_clip_loss(LossInputs(lp[r], old[r], adv[r], mask[r]))[0] for r in torch.arange(8).split(2))
        / 4
    )
    assert abs(full.item() - naive.item()) > 1e-4


def test_unknown_mode_names_the_option():
    with pytest.raises(ValueError, match="actor.loss.loss_agg_mode"):
        agg_loss(torch.ones(1, 1), torch.ones(1, 1), "sum")


def test_metrics_ratio_and_approx_kl():
    lp = torch.tensor([[0.0, math.log(2.0), 5.0]])
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the masked token's huge ratio must not count
    _, m = ppo_clip_loss(LossInputs(lp, old, torch.ones(1, 3), mask))
    assert m["ratio_max"].item() == pytest.approx(2.0)
    assert m["ratio_mean"].item() == pytest.approx(1.5)
    assert m["approx_kl"].item() == pytest.approx(-math.log(2.0) / 2)


def test_kl_estimators_closed_forms():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    d = lp - ref
    assert torch.allclose(kl_penalty(lp, ref, "k1"), d)
    assert torch.allclose(kl_penalty(lp, ref, "abs"), d.abs())
    assert torch.allclose(kl_penalty(lp, ref, "k2"), 0.5 * d**2)
    assert torch.allclose(kl_penalty(lp, ref, "low_var_kl"), torch.exp(-d) + d - 1)
    assert kl_penalty(lp, ref, "k3")[2].item() == 0.0
    assert (kl_penalty(lp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_penalty(lp, ref, "k4")


def test_k3_is_an_unbiased_kl_estimate():
    """E_{x~p}[k3] = KL(p || q) for two categorical distributions (closed form)."""
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    k3 = kl_penalty(p.log(), q.log(), "k3")
    assert (p * k3).sum().item() == pytest.approx((p * (p / q).log()).sum().item(), rel=1e-12)


def test_log_probs_and_entropy_match_log_softmax_and_are_stable():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(0, 11, (3, 5), generator=g)
    ref = torch.log_softmax(logits, -1)
    lp = log_probs_from_logits(logits, labels, chunk_rows=4)  # chunks that do not divide 15 rows
    assert torch.allclose(lp, ref.gather(-1, labels[..., None])[..., 0], atol=1e-12)
    ent = entropy_from_logits(logits, chunk_rows=4)
    assert torch.allclose(ent, -(ref.exp() * ref).sum(-1), atol=1e-12)
    huge = torch.tensor([[1e4, 1e4 - 1.0, -1e4]])
    assert torch.isfinite(entropy_from_logits(huge)).all()
    assert entropy_from_logits(huge).item() == pytest.approx(
        -(torch.log_softmax(huge.double(), -1).exp() * torch.log_softmax(huge.double(), -1)).sum().item(),
        rel=1e-5,
    )


# ------------------------------------------------------------------ GSPO and the registry


def hand_worked_gspo_inputs():
    """Two sequences. Row 0: 2 tokens with log-ratios 0.1 and 0.3, so s_0 = e^0.2 = 1.2214, A = +1: above
    1 + 0.2, clipped. Row 1: 1 token (plus padding) with log-ratio -0.1, s_1 = e^-0.1 = 0.9048, A = -1: inside
    [0.8, 1.2], not clipped."""
    old = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], dtype=torch.float64)
    lp = old + torch.tensor([[0.1, 0.3], [-0.1, 7.0]], dtype=torch.float64)  # 7.0 sits on padding
    adv = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    return lp, old, adv, mask


def test_gspo_matches_the_hand_worked_example():
    lp, old, adv, mask = hand_worked_gspo_inputs()
    lp = lp.clone().requires_grad_(True)
    s1 = math.exp(-0.1)
    loss, metrics = gspo_loss(LossInputs(lp, old, adv, mask, loss_agg_mode="seq-mean-token-mean"))
    # Row 0: max(-1.2214, -1.2) = -1.2 (clipped); row 1: max(0.9048, 0.9048) = 0.9048; mean over rows.
    assert loss.item() == pytest.approx((-1.2 + s1) / 2, rel=1e-12)
    loss.backward()
    # Row 0 is clipped: no gradient. Row 1: d/d lp of (1/2) * (-A) * s_1 over its one token = s_1 / 2.
    expected_grad = torch.tensor([[0.0, 0.0], [s1 / 2, 0.0]], dtype=torch.float64)
    assert torch.allclose(lp.grad, expected_grad, atol=1e-12)
    # Token-mean weighs row 0's two tokens twice: (2 * -1.2 + 0.9048) / 3.
    token_mean, _ = gspo_loss(LossInputs(lp.detach(), old, adv, mask, loss_agg_mode="token-mean"))
    assert token_mean.item() == pytest.approx((2 * -1.2 + s1) / 3, rel=1e-12)
    assert metrics["clipfrac"].item() == pytest.approx(2 / 3)  # row 0's two tokens of three
    assert metrics["ratio_max"].item() == pytest.approx(math.exp(0.2))
    assert metrics["approx_kl"].item() == pytest.approx(-(0.1 + 0.3 - 0.1) / 3)
    # PPO-clip on the same tokens is a different objective: token 0 of row 0 (ratio e^0.1) is not clipped.
    ppo, _ = ppo_clip_loss(LossInputs(lp.detach(), old, adv, mask, loss_agg_mode="seq-mean-token-mean"))
    assert ppo.item() == pytest.approx(((-math.exp(0.1) - 1.2) / 2 + s1) / 2, rel=1e-12)


def test_gspo_gradient_is_the_sequence_level_objectives():
    """Against a plain sequence-level GSPO: J = mean_i max(-A_i s_i, -A_i clip(s_i)), s_i the geometric mean
    of row i's token ratios, differentiated by autograd."""
    lp, old, _, mask = random_inputs(seed=4)
    adv = torch.randn(lp.shape[0], 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    low, high = 0.05, 0.08
    ours = lp.clone().requires_grad_(True)
    loss, _ = gspo_loss(
        LossInputs(
            ours,
            old,
            adv.expand_as(lp),
            mask,
            clip_ratio_low=low,
            clip_ratio_high=high,
            loss_agg_mode="seq-mean-token-mean",
        )
    )
    loss.backward()

    plain = lp.clone().requires_grad_(True)
    terms = []
    for i in range(lp.shape[0]):
        n = int(mask[i].sum())
        s = torch.exp((plain[i, :n] - old[i, :n]).mean())
        a = adv[i, 0]
        terms.append(torch.maximum(-a * s, -a * s.clamp(1 - low, 1 + high)))
    reference = torch.stack(terms).mean()
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    assert torch.allclose(ours.grad, plain.grad, atol=1e-12)
    assert (ours.grad != 0).any() and (ours.grad == 0).any()  # both clipped and live rows


def test_gspo_refuses_dual_clip():
    lp, old, adv, mask = hand_worked_gspo_inputs()
    with pytest.raises(
        ValueError, match="actor.loss.clip_ratio_c must be null with actor.loss.policy_loss=gspo"
    ):
        gspo_loss(LossInputs(lp, old, adv, mask, clip_ratio_c=3.0))


def test_registry_picks_losses_by_name_and_names_the_option():
    assert {"ppo_clip", "gspo"} <= set(policy_losses())
    assert get_policy_loss("ppo_clip") is ppo_clip_loss and get_policy_loss("gspo") is gspo_loss
    with pytest.raises(
        ValueError, match="actor.loss.policy_loss: unknown 'ppo'; choose one of gspo, ppo_clip"
    ):
        get_policy_loss("ppo")
    with pytest.raises(ValueError, match="'gspo' is already registered"):
        register_policy_loss("gspo")(gspo_loss)

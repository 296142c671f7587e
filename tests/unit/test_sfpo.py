"""SFPO parameter ops on plain tensors and the step controller's entropy switch."""

import pickle

import pytest
import torch

from sfpo_rl.algorithms.sfpo import (
    SFPOConfig,
    SFPOController,
    displacement_norm,
    entropy_z,
    reposition_,
    restore_,
    snapshot_,
)


def params(seed):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(5, 3, generator=g)),
        torch.nn.Parameter(torch.randn(7, generator=g)),
    ]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
def test_reposition_matches_closed_form(alpha):
    fast = params(0)
    slow = snapshot_(params(1))
    expected = [s + alpha * (f.detach() - s) for f, s in zip(fast, slow)]
    storages = [p.data_ptr() for p in fast]
    reposition_(fast, slow, alpha)
    for p, e in zip(fast, expected):
        assert torch.allclose(p, e, atol=1e-6)
    assert [p.data_ptr() for p in fast] == storages  # in place


def test_alpha_one_keeps_fast_and_alpha_zero_restores_slow_exactly():
    fast, slow = params(0), snapshot_(params(1))
    before = [p.detach().clone() for p in fast]
    reposition_(fast, slow, 1.0)
    assert all(torch.equal(p, b) for p, b in zip(fast, before))
    reposition_(fast, slow, 0.0)
    assert all(torch.equal(p, s) for p, s in zip(fast, slow))


def test_snapshot_is_a_copy_and_restore_undoes_updates():
    p = params(0)
    slow = snapshot_(p, device="cpu")
    with torch.no_grad():
        p[0].add_(1.0)
    assert not torch.equal(p[0], slow[0])
    assert displacement_norm(p, slow).item() == pytest.approx(15**0.5)
    restore_(p, slow)
    assert all(torch.equal(a, b) for a, b in zip(p, slow))
    assert displacement_norm(p, slow).item() == 0.0


def test_reposition_scales_the_displacement_by_alpha():
    fast, slow = params(0), snapshot_(params(1))
    before = displacement_norm(fast, slow).item()
    reposition_(fast, slow, 0.8)
    assert displacement_norm(fast, slow).item() == pytest.approx(0.8 * before, rel=1e-5)


def test_mismatched_inputs_are_rejected():
    with pytest.raises(ValueError, match="2 parameters but 1 slow"):
        reposition_(params(0), snapshot_(params(1))[:1], 0.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        reposition_(params(0), snapshot_(params(1)), 1.5)


# ---------------------------------------------------------------------------------------------- controller


def run(controller, series, start=1):
    """Observe the series; return the step whose entropy fired the switch (or None) and the plans."""
    fired, plans = None, []
    for step, entropy in enumerate(series, start=start):
        plans.append(controller.plan(step))
        if controller.observe(step, entropy) and fired is None:
            fired = step
    return fired, plans


def test_defaults_are_the_papers():
    cfg = SFPOConfig()
    assert (cfg.inner_steps, cfg.alpha, cfg.entropy_window, cfg.entropy_threshold) == (3, 0.8, 30, 1.0)


def test_switch_fires_exactly_where_the_hand_built_series_says():
    # window W = 4. Steps 1-4 constant 1.0 -> z = 0. Step 5: window [1, 1, 1, 1.2]:
    # mean 1.05, population std sqrt(3 * .05^2 + .15^2) / 2 = 0.0866, z = 0.15 / 0.0866 = 1.732 >= 1.5.
    series = [1.0, 1.0, 1.0, 1.0, 1.2, 0.1, 0.1, 0.1]
    ctrl = SFPOController({"entropy_window": 4, "entropy_threshold": 1.5})
    fired, plans = run(ctrl, series)
    assert fired == 5
    assert ctrl.last_z is not None and ctrl.switched_off_after == 5
    assert [p.sfpo for p in plans] == [True] * 5 + [False] * 3  # the step that fired ran SFPO; later ones not
    assert {p.reason for p in plans[5:]} == {"entropy_switch"}  # never back on, even after entropy drops
    assert entropy_z([1.0, 1.0, 1.0, 1.2]) == pytest.approx(3**0.5, rel=1e-6)


def test_threshold_just_above_the_z_does_not_fire():
    ctrl = SFPOController({"entropy_window": 4, "entropy_threshold": 1.7321})
    assert run(ctrl, [1.0, 1.0, 1.0, 1.0, 1.2])[0] is None


def test_never_fires_before_the_window_is_full():
    # A huge jump at step 3 with W = 5: no z yet (2 < W values before it would be needed).
    ctrl = SFPOController({"entropy_window": 5, "entropy_threshold": 0.1})
    fired, _ = run(ctrl, [1.0, 1.0, 9.0, 1.0])
    assert fired is None and ctrl.last_z is None
    assert ctrl.observe(5, 9.0)  # 5th value: window full, z = (9 - 4.2) / 3.92 = 1.22 >= 0.1


def test_one_sided_ignores_entropy_drops_unless_two_sided():
    series = [1.0, 1.0, 1.0, 0.5]
    assert run(SFPOController({"entropy_window": 4}), series)[0] is None
    assert run(SFPOController({"entropy_window": 4, "two_sided": True}), series)[0] == 4


def test_stop_step_and_disable_and_adaptive_off():
    ctrl = SFPOController({"stop_step": 3, "adaptive_switch": False, "entropy_window": 2})
    fired, plans = run(ctrl, [1.0, 5.0, 50.0, 500.0])
    assert fired is None  # adaptive switch off
    assert [p.reason for p in plans] == ["sfpo", "sfpo", "stop_step", "stop_step"]
    plan = SFPOController({"enable": False}).plan(1)
    assert not plan.sfpo and plan.reason == "disabled"


def test_state_survives_save_and_load():
    ctrl = SFPOController({"entropy_window": 4, "entropy_threshold": 1.5})
    run(ctrl, [1.0, 1.0, 1.0, 1.0, 1.2])
    state = pickle.loads(pickle.dumps(ctrl.state_dict()))
    resumed = SFPOController({"entropy_window": 4, "entropy_threshold": 1.5})
    resumed.load_state_dict(state)
    assert not resumed.plan(6).sfpo and resumed.plan(6).reason == "entropy_switch"
    assert resumed.history == ctrl.history

    before = SFPOController({"entropy_window": 4, "entropy_threshold": 1.5})
    run(before, [1.0, 1.0, 1.0, 1.0])
    again = SFPOController({"entropy_window": 4, "entropy_threshold": 1.5})
    again.load_state_dict(before.state_dict())
    assert again.observe(5, 1.2)  # the restored window lets the switch fire at the same step


def test_observe_rejects_bad_values():
    ctrl = SFPOController()
    ctrl.observe(1, 1.0)
    with pytest.raises(ValueError, match="step 1 observed after step 1"):
        ctrl.observe(1, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        ctrl.observe(2, float("nan"))


@pytest.mark.parametrize(
    "bad, option",
    [
        ({"inner_steps": 0}, "inner_steps"),
        ({"alpha": 1.2}, "alpha"),
        ({"entropy_window": 1}, "entropy_window"),
        ({"enable": "yes"}, "enable"),
        ({"kk": 1}, "kk"),
    ],
)
def test_bad_config_names_the_option(bad, option):
    with pytest.raises(ValueError, match=f"algorithm.sfpo.{option}"):
        SFPOController(bad)

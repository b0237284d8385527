"""The critic diagnostics: the gradients they compare and the on-policy R^2 window (rewardbooth.training.critic_diagnostics)."""

import json

import torch

from rewardbooth.training.critic_diagnostics import FitWindow, alignment_terms


def test_alignment_compares_the_weighted_action_gradients():
    """Q = sum(a) and r = sum(a * c): dQ/da = w, dr/da = w * c per sample, compared over the whole batch."""
    c = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
    action = torch.randn(2, 1, 2, 2)
    weights = torch.tensor([1.0, 0.5])
    terms = alignment_terms(lambda a: a.sum(dim=(1, 2, 3)), lambda a: (a * c).sum(dim=(1, 2, 3)), action, weights)
    # gradients: sample 0 all 1 vs all 1; sample 1 all 0.5 vs all -0.5: cos = (4 - 1) / (4 + 1) = 0.6
    assert terms["critic/grad_cosine"].item() == torch.tensor(0.6).item()
    assert abs(terms["critic/grad_ratio"].item() - 1.0) < 1e-6
    assert not action.requires_grad  # the loop's action is never touched


def test_alignment_of_a_reward_that_ignores_the_action_is_undefined():
    terms = alignment_terms(lambda a: a.sum(dim=(1, 2, 3)), lambda a: torch.ones(len(a)), torch.randn(2, 1, 2, 2),
                            torch.ones(2))
    assert terms["critic/grad_cosine"].isnan() and terms["critic/grad_ratio"].isnan()


def test_fit_window_keeps_the_last_samples_and_round_trips_through_json():
    window = FitWindow(size=8)
    assert window.r2() is None
    window.add(torch.zeros(6), torch.arange(6.0))  # predicting 0 for 0..5
    assert window.r2() is None  # fewer than 8 samples
    window.add(torch.tensor([6.0, 7.0, 8.0, 9.0]), torch.tensor([6.0, 7.0, 8.0, 9.0]))
    assert len(window.q) == 8 and window.rewards == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    # residuals (2, 3, 4, 5, 0, 0, 0, 0): SS_res = 54; targets 2..9: SS_tot = 42
    assert abs(window.r2() - (1 - 54 / 42)) < 1e-6
    restored = FitWindow(size=8)
    restored.load_state_dict(json.loads(json.dumps(window.state_dict())))
    assert restored.r2() == window.r2()

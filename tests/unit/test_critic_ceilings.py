"""The exact ceiling of a critic's gradient cosine: the share of the reward's gradient in the critic's span."""

import torch

from rewardbooth.experiments.toyworld.critic_ceilings import feature_span, pooled_span, projected_share


def test_a_gradient_in_the_span_is_carried_whole_and_an_orthogonal_one_not_at_all():
    span = torch.randn(3, 20)
    assert abs(projected_share(span.T @ torch.randn(3), span) - 1) < 1e-9
    orthogonal = torch.randn(20)
    orthogonal -= span.T @ torch.linalg.lstsq(span.T, orthogonal).solution
    assert projected_share(orthogonal, span) < 1e-6  # float32 residual of the construction


def test_every_function_of_per_channel_means_and_mean_squares_has_its_gradient_in_the_pooled_span():
    torch.manual_seed(0)
    x0_hat = torch.randn(4, 6, 6, requires_grad=True)
    head = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    statistics = torch.cat([x0_hat.mean(dim=(1, 2)), x0_hat.square().mean(dim=(1, 2))])
    (gradient,) = torch.autograd.grad(head(statistics).sum(), x0_hat)
    assert abs(projected_share(gradient.flatten(), pooled_span(x0_hat.detach())) - 1) < 1e-9
    assert projected_share(torch.randn(144), pooled_span(x0_hat.detach())) < 0.5  # 8 of 144 dimensions


def test_every_head_on_an_encoder_has_its_gradient_in_the_row_space_of_the_encoder_jacobian():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 5), torch.nn.Tanh())
    x0_hat = torch.randn(1, 6, 6)
    head = torch.nn.Linear(5, 1)
    point = x0_hat.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(head(encoder(point[None])).sum(), point)
    span = feature_span(lambda x: encoder(x), x0_hat)
    assert span.shape == (5, 36) and abs(projected_share(gradient.flatten(), span) - 1) < 1e-9

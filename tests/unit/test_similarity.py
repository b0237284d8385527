"""The cosine maths of the image scores (rewardbooth.maths.similarity), against values computed by hand."""

import math

import torch

from rewardbooth.maths.similarity import (
    centroid,
    cosine_matrix,
    cosine_to_centroid,
    max_cosine_to_references,
    mean_cosine_to_references,
    paired_cosine,
)

# Two unit images and two unit references: x-axis, and (0.6, 0.8) at cos 0.6 / 0.8 to the axes.
FEATURES = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
REFERENCES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_cosine_matrix_is_every_image_against_every_reference():
    torch.testing.assert_close(cosine_matrix(FEATURES, REFERENCES), torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    assert cosine_matrix(FEATURES, REFERENCES[:1]).shape == (2, 1)


def test_mean_and_max_cosine_to_references():
    torch.testing.assert_close(mean_cosine_to_references(FEATURES, REFERENCES), torch.tensor([0.5, 0.7]))
    torch.testing.assert_close(max_cosine_to_references(FEATURES, REFERENCES), torch.tensor([1.0, 0.8]))


def test_paired_cosine_pairs_rows():
    torch.testing.assert_close(paired_cosine(FEATURES, REFERENCES), torch.tensor([1.0, 0.8]))
    torch.testing.assert_close(paired_cosine(FEATURES, FEATURES.flip(0)), torch.tensor([0.6, 0.6]))


def test_centroid_is_the_normalised_mean_and_scores_by_cosine():
    center = centroid(REFERENCES)  # mean (0.5, 0.5), normalised: (1, 1) / sqrt 2
    torch.testing.assert_close(center, torch.full((2,), 1 / math.sqrt(2)))
    # (1, 0) -> 1/sqrt2 = 0.7071; (0.6, 0.8) -> 1.4/sqrt2 = 0.9899
    torch.testing.assert_close(cosine_to_centroid(FEATURES, center), torch.tensor([1.0, 1.4]) / math.sqrt(2))


def test_gradients_flow_to_the_images():
    features = FEATURES.clone().requires_grad_(True)
    mean_cosine_to_references(features, REFERENCES).sum().backward()
    # d/dx of mean over references of x . r = mean of the references, (0.5, 0.5), for each image
    torch.testing.assert_close(features.grad, torch.full((2, 2), 0.5))

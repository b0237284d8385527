"""Cosine similarity of embeddings: the maths of DreamBench's DINO, CLIP-I and CLIP-T scores and of the toy
judge's identity score (Ruiz et al. 2023, DreamBooth §4.1).

Every function takes embeddings already L2-normalised (the feature extractors return unit vectors), so a
cosine is a dot product. DreamBench's subject fidelity is the mean over reference photos of the cosine
between a generated image and each photo; CLIP-T pairs each image with its own prompt; the toy reward
compares with the normalised centroid of the references.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_matrix(features: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Every image's cosine to every reference.

    Shape: unit features (B, D), unit references (N, D) -> (B, N)
    """
    return features @ references.T


def mean_cosine_to_references(features: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Each image's mean cosine over the references (DreamBench's DINO and CLIP-I).

    Shape: unit features (B, D), unit references (N, D) -> (B,)
    """
    return cosine_matrix(features, references).mean(dim=1)


def max_cosine_to_references(features: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Each image's cosine to its best-matching reference.

    Shape: unit features (B, D), unit references (N, D) -> (B,)
    """
    return cosine_matrix(features, references).amax(dim=1)


def paired_cosine(features: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Each row's cosine to the same row of `others`, e.g. an image to its own prompt (DreamBench's CLIP-T).

    Shape: unit features (B, D), unit others (B, D) -> (B,)
    """
    return (features * others).sum(dim=-1)


def centroid(features: torch.Tensor) -> torch.Tensor:
    """The mean direction of a set of embeddings, itself unit length.

    Shape: (N, D) -> (D,)
    """
    return F.normalize(features.mean(dim=0), dim=0)


def cosine_to_centroid(features: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Each image's cosine to one unit vector, e.g. the `centroid` of the references.

    Shape: unit features (B, D), unit center (D,) -> (B,)
    """
    return features @ center

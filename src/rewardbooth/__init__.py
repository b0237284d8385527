"""RewardBooth: personalize text-to-image diffusion models with deterministic-policy-gradient RL."""

__version__ = "0.1.0"

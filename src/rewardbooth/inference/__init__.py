"""Sampling from a base or personalized model (`generate`): what a user runs after training."""

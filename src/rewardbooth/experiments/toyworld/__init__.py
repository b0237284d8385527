"""Experiments in the toy world (rewardbooth.toyworld is the world itself and never imports these)."""

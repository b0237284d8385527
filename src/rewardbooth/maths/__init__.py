"""Pure maths, tested by hand: the DPG equations (`dpg`), the cosines every fidelity score is made of
(`similarity`), the statistics behind every claim (`statistics`).

Tensors in, tensors out; no model, file or config. Nothing here imports another rewardbooth package but core.
"""

"""The bottom layer, used by every other: configuration, errors, registries, safe writes to disk, progress.

Nothing here imports another rewardbooth package.
"""

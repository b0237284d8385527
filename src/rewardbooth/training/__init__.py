"""One training run: the run's setup (`setup`), its batches (`batches`), the loop (`loop`), the critic and its
diagnostics, checkpoints, reward-based checkpoint selection, monitoring and prior-preservation class images.

Above models, rewards, methods and evaluation; below inference and experiments. `training.loop.train(config)`
is the entry point.
"""

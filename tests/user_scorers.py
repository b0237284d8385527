"""User image scorers (and latent rewards that must be refused where images are scored), loaded by dotted path
in the tests (`user_scorers:...`), as a user's own module would be."""

import torch

from rewardbooth.rewards import RewardOutput


class Scripted:
    """Validation scores read from a script: the k-th call scores every image values[k]."""

    differentiable = False

    def __init__(self, setup, values=(0.0,)):
        self.values, self.calls = list(values), 0

    def score_images(self, images, prompts):
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return RewardOutput(torch.full((len(images),), float(value)))


class Recorder:
    """An image scorer keeping what it is shown: brightness of each image, as a bare tensor."""

    differentiable = True
    seen = []  # (images, prompts) of every call, across instances

    def __init__(self, setup):
        pass

    def score_images(self, images, prompts):
        Recorder.seen.append((images.detach().clone(), list(prompts)))
        return images.mean(dim=(1, 2, 3))


def make_brightness(setup):
    """A plain function factory returning an image scorer: its kind is known once built."""

    class Brightness:
        differentiable = True

        def score_images(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    return Brightness()


def make_latent(setup):
    """A plain function factory returning a latent reward (a bare callable)."""

    class Latent:
        differentiable = True

        def __call__(self, x0_hat, context):
            return -x0_hat.float().square().mean(dim=(1, 2, 3))

    return Latent()


class NeverBuilt:
    """Declared latent: a command that scores images must refuse it before building it."""

    differentiable = True
    kind = "latent"

    def __init__(self, setup):
        raise AssertionError("a declared latent reward was built where images are scored")

    def __call__(self, x0_hat, context):
        return -x0_hat.float().square().mean(dim=(1, 2, 3))

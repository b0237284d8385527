"""`toy_alignment`: the reward judge's caption agreement of an image with its own prompt, with a gradient."""

import numpy as np
import torch

from rewardbooth.rewards import RewardSetup, make_scorer
from rewardbooth.toyworld import subjects
from rewardbooth.toyworld.assets import JUDGE_DIR
from rewardbooth.toyworld.judge import caption_agreement, load_judge, to_tensor


def rendered(scene_name):
    subject = subjects.make_subject(100)
    image = subject.render(subject.scene("large", "center", scene_name), np.random.default_rng(0))
    return to_tensor(np.array(image)[None])


def test_toy_alignment_is_the_judges_caption_agreement_and_prefers_the_prompt_the_image_follows():
    snow = rendered("snow")
    reward = make_scorer("toy_alignment", RewardSetup(snow, "sks", torch.device("cpu")))
    prompts = ["a sks ring in the snow", "a sks ring at night"]
    images = snow.repeat(2, 1, 1, 1).requires_grad_(True)
    scores = reward.score_images(images, prompts).scores
    torch.testing.assert_close(scores.detach(), caption_agreement(load_judge(JUDGE_DIR), images.detach(), prompts))
    assert scores[0] > scores[1]
    scores.sum().backward()
    assert images.grad.abs().sum() > 0

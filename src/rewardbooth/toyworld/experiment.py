"""One measurement of the toy world: personalize the shipped model to a subject with one objective,
generate the subject's prompt set, and score the images with the judge. The demo and the benchmark use it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rewardbooth.config import load_config
from rewardbooth.generate import generate
from rewardbooth.toyworld import subjects
from rewardbooth.toyworld.judge import Judge
from rewardbooth.toyworld.scoring import score
from rewardbooth.train import train

GUIDANCE, SAMPLER_STEPS = 4.0, 25

# Objectives compared by the demo and the benchmark: everything but the objective is shared. `base-model`
# trains nothing: the shipped model draws the prompts with the identifier removed ("a ball on the beach"),
# the fidelity a subject gets without personalization (the floor).
BASE_MODEL = "base-model"
OBJECTIVES = {
    BASE_MODEL: [],
    "baseline": ["objective.name=baseline"],
    "dpg-look-forward": ["objective.name=dpg"],
    "dpg-look-forward-paper": ["objective.name=dpg", "objective.instance_weight=0", "objective.gamma=0.9986",
                               "critic.input=residual", "critic.optimizer=sgd", "critic.lr=0.01"],
    "dpg-toy-identity": ["objective.name=dpg", "objective.reward=toy_identity", "critic.input=state_action"],
    # The critic reads x0_hat, which the reward scores; lambda tuned on subjects 1-2 (1, 0.3 tried; 0.3 best).
    "dpg-toy-identity-x0": ["objective.name=dpg", "objective.reward=toy_identity", "critic.input=prediction",
                            "objective.critic_weight=0.3"],
}


@dataclass(frozen=True)
class Setting:
    steps: int = 600  # tuned on subjects 1-2: 600 steps at lr 1e-4 doubled fidelity over 300 (0.34 vs 0.16)
    lr: float = 1e-4
    images_per_prompt: int = 2
    num_prompts: int = 25
    num_class_images: int = 20
    overrides: tuple[str, ...] = ()  # `section.key=value` applied to every objective (for sweeps)


def personalize_and_score(subject: subjects.Subject, objective: str, seed: int, folder: Path,
                          class_dir: Path, judge: Judge, setting: Setting) -> dict[str, float]:
    """Writes the subject's photos, the trained model and its images under `folder`; returns the scores."""
    reference_paths = [p for p in subjects.write_subject(subject, folder / "subject") if p.suffix == ".png"]
    references = [Image.open(path).convert("RGB") for path in reference_paths]
    prompts = subjects.prompt_set(subject)[:setting.num_prompts]
    started = time.perf_counter()
    if objective == BASE_MODEL:
        from rewardbooth.data import remove_identifier
        from rewardbooth.toyworld.assets import BASE_MODEL_DIR

        return _generate_and_score(str(BASE_MODEL_DIR), [remove_identifier(p, subjects.IDENTIFIER) for p in prompts],
                                   folder, seed, judge, references, setting, train_s=0.0)
    model_dir = train(load_config("default", [
        "model.pretrained=toy", f"data.instance_dir={folder / 'subject'}",
        f"data.instance_prompt={subjects.instance_prompt(subject)}", f"data.class_prompt={subjects.class_prompt(subject)}",
        "data.resolution=32", f"data.num_class_images={setting.num_class_images}", f"data.class_dir={class_dir}",
        f"train.lr={setting.lr}", f"train.max_steps={setting.steps}", f"train.seed={seed}", "train.checkpoint_every=0",
        "train.report_to=none", f"train.output_dir={folder / 'model'}", f"validation.every={max(1, setting.steps // 2)}",
        f"validation.prompts={[subjects.instance_prompt(subject), prompts[0]]}", "validation.num_images=4",
        f"validation.guidance_scale={GUIDANCE}", f"validation.num_inference_steps={SAMPLER_STEPS}",
        *OBJECTIVES[objective], *setting.overrides,
    ]))
    return _generate_and_score(str(model_dir), prompts, folder, seed, judge, references, setting,
                               train_s=time.perf_counter() - started)


def _generate_and_score(model: str, prompts: list[str], folder: Path, seed: int, judge: Judge,
                        references: list[Image.Image], setting: Setting, train_s: float) -> dict[str, float]:
    started = time.perf_counter()
    paths = generate(model, prompts, folder / "generated", num_images=setting.images_per_prompt, seed=seed,
                     num_inference_steps=SAMPLER_STEPS, guidance_scale=GUIDANCE, resolution=32)
    images = [Image.open(path) for path in paths]
    image_prompts = [prompt for prompt in prompts for _ in range(setting.images_per_prompt)]
    return {**score(judge, images, image_prompts, references, subjects.IDENTIFIER),
            "train_s": train_s, "generate_s": time.perf_counter() - started}


@torch.no_grad()
def fidelity_ceiling(subject: subjects.Subject, judge: Judge, views: int = 8) -> float:
    """The fidelity of new views of the subject after a round trip through the base model's VAE: what a
    model that had learned the subject perfectly could score, since it can only draw what the VAE decodes."""
    from diffusers import AutoencoderKL

    from rewardbooth.toyworld.assets import BASE_MODEL_DIR
    from rewardbooth.toyworld.judge import identity_similarity, to_tensor

    vae = AutoencoderKL.from_pretrained(BASE_MODEL_DIR, subfolder="vae").eval()
    references = to_tensor(np.stack([np.asarray(i) for i in subjects.reference_images(subject)]))
    new_views = to_tensor(np.stack([np.asarray(i) for i in subjects.reference_images(subject, views, seed=1)]))
    decoded = (vae.decode(vae.encode(new_views * 2 - 1).latent_dist.mean).sample.clamp(-1, 1) + 1) / 2
    return float(identity_similarity(judge, decoded, references).mean())

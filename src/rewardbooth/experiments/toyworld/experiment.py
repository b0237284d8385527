"""One measurement of the toy world: personalize the shipped model to a subject with one objective,
generate the subject's prompt set, and score the images with the judge. The demo and the benchmark use it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rewardbooth.core.config import load_config
from rewardbooth.core.errors import UserError
from rewardbooth.inference.generate import generate
from rewardbooth.toyworld import subjects
from rewardbooth.toyworld.judge import Judge
from rewardbooth.toyworld.scoring import score
from rewardbooth.training.loop import train

GUIDANCE_SCALE, NUM_INFERENCE_STEPS = 4.0, 25

# Objectives compared by the demo and the benchmark: everything but the objective is shared. `base-model`
# trains nothing: the shipped model draws the prompts with the identifier removed ("a ball on the beach"),
# the fidelity a subject gets without personalization (the floor).
BASE_MODEL = "base-model"
PAPER_OBJECTIVE = ["objective.instance_weight=0", "objective.gamma=0.9986", "critic.name=released",
                   "critic.input=residual", "critic.optimizer=sgd", "critic.lr=0.01"]  # presets/paper.yaml
IDENTITY = ["objective.reward=toy_identity", "objective.critic_weight=0.3"]  # lambda tuned on subjects 1-2
BLACKBOX = ["objective.reward=toy_identity_blackbox", "objective.critic_weight=0.3"]  # lambda as the twin's
# Rollouts cost group x sampler steps forward passes and group x trained steps backward ones per scoring step.
# Scoring every 2nd step: 300 toy steps on one thread took 53 CPU s against DreamBooth's 20 (2.7x; 1.8x when
# scoring every 4th), within the ~4x budget (farm-bench, start-up of 7 s subtracted; docs/toyworld.md).
GRPO_BUDGET = ["objective.reward_every=2", "objective.grpo.group_size=4", "objective.grpo.num_steps=6",
               "objective.grpo.trained_steps=1"]
SCENES = ["objective.scene_share=0.5", "data.scene_prompts=toy"]
IDENTITY_ALIGNMENT = "objective.reward={toy_identity: 1, toy_alignment: 1}"
ENCODER_ALIGNMENT = "objective.reward={toy_encoder_identity: 1, toy_alignment: 1}"
BLACKBOX_ALIGNMENT = "objective.reward={toy_identity_blackbox: 1, toy_alignment: 1}"
OBJECTIVES = {
    BASE_MODEL: [],
    "baseline": ["objective.name=baseline"],
    # Controls: DreamBooth with the instance loss doubled (DPG look-forward adds a second, inverse-SNR
    # weighted instance loss), and the exact reward gradient in place of the critic's (`direct`).
    "baseline-iw2": ["objective.name=baseline", "objective.instance_weight=2"],
    # The tuned DreamBooth: the base model's own tuned setting (TUNED_DREAMBOOTH).
    "baseline-tuned": ["objective.name=baseline"],
    # The tuned DreamBooth given the CPU seconds of the costliest black-box route (grpo-blackbox, 2.7x a
    # 600-step DreamBooth run on `toy`): the equal-compute control for the rollout and feature-critic routes.
    "baseline-tuned-1600": ["objective.name=baseline", "train.max_steps=1600"],
    "dpg-look-forward": ["objective.name=dpg"],
    "direct-look-forward": ["objective.name=direct"],
    "dpg-look-forward-paper": ["objective.name=dpg", *PAPER_OBJECTIVE],
    "direct-look-forward-paper": ["objective.name=direct", *PAPER_OBJECTIVE[:2]],
    "dpg-toy-identity-x0": ["objective.name=dpg", *IDENTITY, "critic.input=prediction"],
    "direct-toy-identity": ["objective.name=direct", *IDENTITY],
    # A reward with no gradient (the identity cosine rounded to 0.05) through the routes that need none: the
    # feature critic on the third identity network, and rollout policy gradients. Their controls: the exact
    # gradient of the unrounded twin (`direct-toy-identity`), and `direct` on the critic's encoder's own
    # cosine (`direct-encoder-identity`): a critic that does not beat it gains only what the encoder knows.
    "dpg-feature-blackbox": ["objective.name=dpg", *BLACKBOX, "critic.name=feature", "critic.encoder=toy_encoder",
                             "critic.input=prediction"],
    "grpo-blackbox": ["objective.name=grpo", "objective.reward=toy_identity_blackbox", *GRPO_BUDGET],
    "direct-encoder-identity": ["objective.name=direct", "objective.reward=toy_encoder_identity",
                                "objective.critic_weight=0.3"],
    # Prompts without photos (issue: fidelity up, alignment held): half the instance rows are states the policy
    # samples for a training-scene prompt (`subjects.scene_templates`), scored by identity and the reward
    # judge's caption agreement together. They must be scored on prompts naming no training scene or position
    # (Setting.prompts="unseen"; `check_prompt_leak`).
    "direct-identity-alignment-scenes": ["objective.name=direct", IDENTITY_ALIGNMENT, "objective.critic_weight=0.3",
                                         *SCENES],
    # The same with identity from the third encoder's cosine (what `direct-encoder-identity` climbs): the reward
    # judge's own identity gradient on prompt-only states is climbed adversarially (tuning subject 1: reward
    # judge fidelity 0.63, held-out 0.23), a third network's transfers.
    "direct-encoder-alignment-scenes": ["objective.name=direct", ENCODER_ALIGNMENT, "objective.critic_weight=0.3",
                                        *SCENES],
    # Identity only where there is a photo, the prompt only where there is none (objective.scene_reward): on
    # prompt-only states an identity reward pulls the samples toward the photos (tuning subject 1: held-out
    # alignment 0.41-0.48 against the tuned DreamBooth's 0.59).
    "direct-encoder-identity-scene-alignment": ["objective.name=direct", "objective.reward=toy_encoder_identity",
                                                "objective.scene_reward=toy_alignment", "objective.critic_weight=0.3",
                                                *SCENES],
    "dpg-feature-blackbox-scenes": ["objective.name=dpg", *BLACKBOX, "critic.name=feature",
                                    "critic.encoder=toy_encoder", "critic.input=prediction", *SCENES],
    "grpo-blackbox-alignment-scenes": ["objective.name=grpo", BLACKBOX_ALIGNMENT, *GRPO_BUDGET, *SCENES],
}
# What each method is compared with, the strongest fair control last: a claim is a paired delta against it.
CONTROLS = {
    "dpg-look-forward": ("baseline", "baseline-iw2", "baseline-tuned", "direct-look-forward"),
    "direct-look-forward": ("baseline", "baseline-iw2", "baseline-tuned"),
    "dpg-look-forward-paper": ("baseline", "baseline-tuned", "direct-look-forward-paper"),
    "direct-look-forward-paper": ("baseline",),
    "dpg-toy-identity-x0": ("baseline", "baseline-iw2", "baseline-tuned", "direct-toy-identity"),
    "direct-toy-identity": ("baseline", "baseline-iw2", "baseline-tuned"),
    "dpg-feature-blackbox": ("baseline", "baseline-tuned", "baseline-tuned-1600", "grpo-blackbox",
                             "direct-toy-identity", "direct-encoder-identity"),
    "grpo-blackbox": ("baseline", "baseline-tuned", "baseline-tuned-1600", "direct-toy-identity"),
    "baseline-tuned-1600": ("baseline", "baseline-tuned"),
    "direct-encoder-identity": ("baseline", "baseline-tuned", "direct-toy-identity"),
    "direct-identity-alignment-scenes": ("baseline", "base-model", "baseline-tuned", "direct-toy-identity"),
    "direct-encoder-alignment-scenes": ("baseline", "base-model", "baseline-tuned", "direct-encoder-identity"),
    "direct-encoder-identity-scene-alignment": ("baseline", "base-model", "baseline-tuned", "direct-encoder-identity",
                                                "direct-encoder-alignment-scenes"),
    "dpg-feature-blackbox-scenes": ("baseline", "base-model", "baseline-tuned", "dpg-feature-blackbox"),
    "grpo-blackbox-alignment-scenes": ("baseline", "base-model", "baseline-tuned", "grpo-blackbox"),
    BASE_MODEL: ("baseline",),
    "baseline-iw2": ("baseline",),
    "baseline-tuned": ("baseline",),
}
# The tuned DreamBooth of each base model: the best of the same 7 settings (lr 5e-5 / 1e-4 / 2e-4 x instance
# weight 1 / 2, and weight 4) on tuning subjects 1-4 by the reward judge's fidelity, alignment within 0.02 of
# the default's: the same tuning budget DPG's lambda got. toy: benchmarks/toyworld-tuning/results.md;
# toy-flow: benchmarks/toyworld-flow-tuning/results.md.
# Both came out at instance weight 4 and lr 1e-4 (toy-flow: reward-judge fidelity 0.416 against 0.414 for weight 2
# and 0.383 for the default; lr 2e-4 lost 0.07-0.08 alignment).
TUNED_DREAMBOOTH = {"toy": ["objective.instance_weight=4"], "toy-flow": ["objective.instance_weight=4"]}
TUNED_OBJECTIVES = ("baseline-tuned", "baseline-tuned-1600")
# The two judges: `judge` also gives the toy_identity reward; `heldout` never does, so it scores the claims.
JUDGES = ("judge", "heldout")
METRICS = ("fidelity", "alignment")


def objective_overrides(objective: str, model: str = "toy") -> list[str]:
    """An objective's config overrides on base model `model`. `name@section.key=value@...` is objective `name`
    with more overrides (how tuning grids are written: `baseline@train.lr=2e-4@objective.instance_weight=2`)."""
    name, *extra = objective.split("@")
    if name not in OBJECTIVES or any("=" not in item or "." not in item.split("=")[0] for item in extra):
        raise UserError(f"unknown toy-world objective {objective!r}: use one of {', '.join(OBJECTIVES)}, "
                        f"optionally followed by @section.key=value overrides")
    if name == BASE_MODEL and extra:
        raise UserError(f"{BASE_MODEL!r} trains nothing: it takes no overrides ({objective!r})")
    return [*OBJECTIVES[name], *(TUNED_DREAMBOOTH[model] if name in TUNED_OBJECTIVES else ()), *extra]


def metric_key(judge: str, metric: str) -> str:
    """'fidelity' for the reward judge (the key earlier results used), 'heldout_fidelity' for the other."""
    return metric if judge == "judge" else f"{judge}_{metric}"


def load_judges() -> dict[str, Judge]:
    from rewardbooth.toyworld.assets import HELDOUT_JUDGE_DIR, JUDGE_DIR, require
    from rewardbooth.toyworld.judge import load_judge

    return {"judge": load_judge(require(JUDGE_DIR, "judge.json", "rewardbooth.toyworld.judge")),
            "heldout": load_judge(require(HELDOUT_JUDGE_DIR, "judge.json", "rewardbooth.toyworld.judge"))}


@dataclass(frozen=True)
class Setting:
    steps: int = 600  # tuned on subjects 1-2: 600 steps at lr 1e-4 doubled fidelity over 300 (0.34 vs 0.16)
    lr: float = 1e-4
    images_per_prompt: int = 2
    num_prompts: int = 25
    num_class_images: int = 20
    overrides: tuple[str, ...] = ()  # `section.key=value` applied to every objective (for sweeps)
    # "all": the subject's 25 prompts; "unseen": those naming no scene or position that prompt-only training
    # uses (subjects.held_out_prompt_set), for comparing routes that train on scene prompts with any other.
    prompts: str = "all"
    # The base model personalized: `toy` (DDPM UNet) or `toy-flow` (the same world as a rectified-flow SD3
    # transformer on toy's VAE and tokenizer, docs/toyworld.md): everything else is the same for both.
    model: str = "toy"

    def __post_init__(self) -> None:
        if self.model not in TOY_MODELS:
            raise UserError(f"unknown toy-world model {self.model!r}: use one of {', '.join(TOY_MODELS)}")

    def prompt_list(self, subject: subjects.Subject) -> list[str]:
        if self.prompts not in PROMPT_SETS:
            raise UserError(f"unknown toy-world prompt set {self.prompts!r}: use one of {', '.join(PROMPT_SETS)}")
        return PROMPT_SETS[self.prompts](subject)[:self.num_prompts]


PROMPT_SETS = {"all": subjects.prompt_set, "unseen": subjects.held_out_prompt_set}
TOY_MODELS = ("toy", "toy-flow")  # registered model names (models/builtin.py, models/builtin_flow.py)


def check_prompt_leak(objective: str, setting: Setting) -> None:
    """A route trained on the toy scene prompts is scored only on prompts that name none of their scenes."""
    overrides = [*objective_overrides(objective, setting.model), *setting.overrides]
    if setting.prompts != "unseen" and any(o.startswith("data.scene_prompts=") for o in overrides):
        raise UserError(f"{objective!r} trains on the toy scene prompts, so scoring it on prompts naming those "
                        f"scenes would leak: benchmark it with --prompts unseen")


def personalize_and_score(subject: subjects.Subject, objective: str, seed: int, folder: Path,
                          class_dir: Path, judges: dict[str, Judge], setting: Setting) -> dict[str, float]:
    """Writes the subject's photos, the trained model and its images under `folder`; returns the scores."""
    check_prompt_leak(objective, setting)
    write_references(subject, folder)
    prompts = setting.prompt_list(subject)
    started = time.perf_counter()
    if objective == BASE_MODEL:
        from rewardbooth.data.images import remove_identifier

        return _generate_and_score(setting.model, [remove_identifier(p, subjects.IDENTIFIER) for p in prompts],
                                   folder, seed, judges, setting, train_s=0.0)
    model_dir = train(load_config("default", training_overrides(subject, objective, seed, folder, class_dir, setting)))
    return _generate_and_score(str(model_dir), prompts, folder, seed, judges, setting,
                               train_s=time.perf_counter() - started)


def write_references(subject: subjects.Subject, folder: Path) -> list[Path]:
    """The subject's photos under folder/subject (what `data.instance_dir` points at)."""
    return [p for p in subjects.write_subject(subject, folder / "subject") if p.suffix == ".png"]


def training_overrides(subject: subjects.Subject, objective: str, seed: int, folder: Path, class_dir: Path,
                       setting: Setting) -> list[str]:
    """The `default` preset's overrides for one toy-world run of `objective` (trained into folder/model)."""
    prompts = setting.prompt_list(subject)
    return [
        f"model.pretrained={setting.model}", f"data.instance_dir={folder / 'subject'}",
        f"data.instance_prompt={subjects.instance_prompt(subject)}", f"data.class_prompt={subjects.class_prompt(subject)}",
        "data.resolution=32", f"data.num_class_images={setting.num_class_images}", f"data.class_dir={class_dir}",
        f"train.lr={setting.lr}", f"train.max_steps={setting.steps}", f"train.seed={seed}", "train.checkpoint_every=0",
        "train.report_to=none", f"train.output_dir={folder / 'model'}", f"validation.every={max(1, setting.steps // 2)}",
        f"validation.prompts={[subjects.instance_prompt(subject), prompts[0]]}", "validation.num_images=4",
        f"validation.guidance_scale={GUIDANCE_SCALE}", f"validation.num_inference_steps={NUM_INFERENCE_STEPS}",
        "train.max_skipped_steps=0",  # a diverged run is a result here (scored, counted as non-finite), not an error
        *objective_overrides(objective, setting.model), *setting.overrides,
    ]


def _generate_and_score(model: str, prompts: list[str], folder: Path, seed: int, judges: dict[str, Judge],
                        setting: Setting, train_s: float) -> dict[str, float]:
    started = time.perf_counter()
    generate(model, prompts, folder / "generated", num_images=setting.images_per_prompt, seed=seed,
             num_inference_steps=NUM_INFERENCE_STEPS, guidance_scale=GUIDANCE_SCALE, resolution=32)
    generate_s = time.perf_counter() - started
    return {**score_generated(folder, judges), "train_s": train_s, "generate_s": generate_s}


def score_generated(folder: Path, judges: dict[str, Judge]) -> dict[str, float]:
    """Every judge's fidelity and alignment of the images under folder/generated (read with their prompts
    from generation.json) against the photos under folder/subject; used again to rescore stored runs."""
    import json

    record = json.loads((folder / "generated" / "generation.json").read_text())
    images = [Image.open(folder / "generated" / item["file"]) for item in record["images"]]
    prompts = [item["prompt"] for item in record["images"]]
    references = [Image.open(path).convert("RGB") for path in sorted((folder / "subject").glob("ref_*.png"))]
    scores = {}
    for name, judge in judges.items():
        for metric, value in score(judge, images, prompts, references, subjects.IDENTIFIER).items():
            scores[metric_key(name, metric)] = value
    return scores


@torch.no_grad()
def fidelity_ceiling(subject: subjects.Subject, judge: Judge, views: int = 8) -> float:
    """The fidelity of new views of the subject after a round trip through the base model's VAE: what a
    model that had learned the subject perfectly could score, since it can only draw what the VAE decodes.
    `toy-flow` has the same VAE weights (only its latents' shift and scale differ, which a round trip undoes)."""
    from diffusers import AutoencoderKL

    from rewardbooth.toyworld.assets import BASE_MODEL_DIR
    from rewardbooth.toyworld.judge import identity_similarity, to_tensor

    vae = AutoencoderKL.from_pretrained(BASE_MODEL_DIR, subfolder="vae").eval()
    references = to_tensor(np.stack([np.asarray(i) for i in subjects.reference_images(subject)]))
    new_views = to_tensor(np.stack([np.asarray(i) for i in subjects.reference_images(subject, views, seed=1)]))
    decoded = (vae.decode(vae.encode(new_views * 2 - 1).latent_dist.mean).sample.clamp(-1, 1) + 1) / 2
    return float(identity_similarity(judge, decoded, references).mean())

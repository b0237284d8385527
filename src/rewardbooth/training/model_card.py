"""The model card: a README.md in the Hugging Face Hub's format in every result, so that uploading the run
folder (`huggingface-cli upload USER/NAME OUTPUT_DIR`) makes a complete model page.

YAML front matter (base_model when the base is a hub id, library_name, tags, instance_prompt; the license is
left to the user: it is the base model's and the training photos' owners' to decide), then the trigger phrase,
method, objective, reward (and critic), the main hyperparameters, the stock diffusers calls that load the
result, links to the run's validation grids and to its config.yaml.

A README.md already in the output folder that no run wrote (the marker did not record it) is never touched:
the card is then written as MODEL_CARD.md, with one log line saying so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from rewardbooth.core.config import Config
from rewardbooth.data.concepts import concepts_of
from rewardbooth.models.loaders import hub_id_of
from rewardbooth.training.output_folder import foreign_entries

logger = logging.getLogger(__name__)

CARD_NAMES = ("README.md", "MODEL_CARD.md")  # the Hub's name first; the second when a user's README is there
NUM_LINKED_SAMPLES = 3
HERE, RESULT_PLACEHOLDER = "here", "path/to/this/folder"  # the variable the methods' `loading_code` reads
FAMILY_TAGS = {"stable-diffusion": "stable-diffusion", "stable-diffusion-xl": "stable-diffusion-xl",
               "stable-diffusion-3": "sd3", "flux": "flux", "z-image": "z-image"}


def card_name(output_dir: Path) -> str | None:
    """README.md, unless the folder holds one a run did not write; then MODEL_CARD.md (None if that too)."""
    foreign = set(foreign_entries(output_dir)) if output_dir.is_dir() else set()
    return next((name for name in CARD_NAMES if name not in foreign), None)


def linked_samples(output_dir: Path, config: Config, step: int) -> list[str]:
    """The last few validation grids, relative to the folder: those written so far, and the final step's,
    which the loop writes right after the result (a stopped run has just written it)."""
    names = {path.name for path in (output_dir / "samples").glob("step_*.png")}
    if config.validation.every:
        names.add(f"step_{step:06d}.png")
    return [f"samples/{name}" for name in sorted(names)[-NUM_LINKED_SAMPLES:]]


def front_matter(config: Config, family: str) -> str:
    tags = ["text-to-image", "diffusers", "rewardbooth", config.method.name.replace("_", "-"),
            *(["lora"] if config.method.name == "lora" else []), FAMILY_TAGS.get(family, family)]
    fields = {**({"base_model": hub_id} if (hub_id := hub_id_of(config.model.pretrained)) else {}),
              "library_name": "diffusers", "tags": list(dict.fromkeys(tags)),
              "instance_prompt": config.data.instance_prompt}
    # The license is the user's to set: it follows from the base model's license and the photos' owners.
    return ("---\n# license: set it to your base model's license (and your photos' terms) before uploading\n"
            + yaml.safe_dump(fields, sort_keys=False, allow_unicode=True) + "---\n")


def training_lines(config: Config, family: str, step: int) -> list[str]:
    objective = config.objective
    reward = objective.reward if isinstance(objective.reward, str) else ", ".join(
        f"{name} x{weight:g}" for name, weight in objective.reward.items())
    lines = [f"- method: `{config.method.name}`"
             + (f" (rank {config.method.lora.rank}, alpha {config.method.lora.alpha or config.method.lora.rank})"
                if config.method.name == "lora" else ""),
             f"- objective: `{objective.name}`, reward: `{reward}`"]
    if objective.name == "dpg":
        lines.append(f"- critic: `{config.critic.name}` (input `{config.critic.input}`, lr {config.critic.lr:g})")
    lines += [f"- steps: {step}, learning rate {config.train.lr:g} ({config.train.lr_scheduler}), effective batch "
              f"{config.train.batch_size * config.train.gradient_accumulation_steps} per process",
              f"- resolution: {config.data.resolution} px, model family: `{family}`, base model: "
              f"`{config.model.pretrained}`",
              f"- text encoder trained: {'yes' if config.method.train_text_encoder else 'no'}, prior preservation: "
              f"{'yes' if config.data.prior_preservation else 'no'}"]
    return lines


def render_card(config: Config, family: str, step: int, loading_code: str | None, samples: list[str]) -> str:
    """The card's text. `loading_code`: the method's stock diffusers calls (None: not known)."""
    concepts = concepts_of(config.data)
    triggers = "\n".join(f"- `{c.identifier}`, trained with the prompt \"{c.instance_prompt}\"" for c in concepts)
    how = (f"```python\nfrom diffusers import DiffusionPipeline\n\n"
           f"{HERE} = {RESULT_PLACEHOLDER!r}  # this folder, or the hub id you uploaded it to\n{loading_code}\nimage = pipeline({concepts[0].instance_prompt!r}).images[0]\n```"
           if loading_code else f"See the documentation of the base method `{config.method.name}`.")
    gallery = "\n".join(f"![validation grid {Path(s).stem}]({s})" for s in samples) or "(no validation samples)"
    return "\n".join([
        front_matter(config, family),
        f"# {concepts[0].identifier}: a personalized {family} model trained with RewardBooth", "",
        f"## Trigger phrase\n\n{triggers}\n\nUse the identifier in your prompts, e.g. \"{concepts[0].instance_prompt}\".", "",
        "## Training", "", *training_lines(config, family, step), "",
        "Every setting of the run is in [config.yaml](config.yaml), a config file `rewardbooth train` reads.", "",
        f"## How to use\n\n{how}", "",
        f"## Validation samples\n\nThe last validation grids (prompts: the validation prompts of config.yaml, "
        f"fixed seeds):\n\n{gallery}", ""])


def write_model_card(folder: Path, output_dir: Path, config: Config, family: str, step: int,
                     loading_code: str | None) -> None:
    """Write the card into `folder` (the result's staging folder, so the marker records it)."""
    name = card_name(output_dir)
    if name is None:
        logger.warning("no model card written: %s already holds a README.md and a MODEL_CARD.md that no run "
                       "wrote", output_dir)
        return
    if name != CARD_NAMES[0]:
        logger.info("%s holds a README.md a run did not write: it is left alone, the model card is %s",
                    output_dir, name)
    text = render_card(config, family, step, loading_code, linked_samples(output_dir, config, step))
    (folder / name).write_text(text, encoding="utf-8")

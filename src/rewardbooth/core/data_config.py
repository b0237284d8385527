"""The `data` section of the config: the subject's photos, prompts, sizes and captions (docs/data.md).

Kept apart from rewardbooth.core.config (which re-exports it) so each module stays readable in one sitting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rewardbooth.core.config_parsing import config_field as _field


@dataclass(frozen=True)
class ConceptConfig:
    """One more subject of a multi-concept run, with its own photos, prompt and identifier."""

    instance_dir: str | None = _field(None, "folder of 3-6 photos of this subject")
    instance_prompt: str | None = _field(None, "its training prompt, containing its identifier")
    identifier: str | None = _field(None, "its rare token (custom_diffusion: its own new token, e.g. '<new2>')")
    class_prompt: str | None = _field(None, "its class prompt, for prior preservation")
    class_dir: str | None = _field(None, "its class-image cache folder (default: under ~/.cache/rewardbooth)")


@dataclass(frozen=True)
class DataConfig:
    instance_dir: str | None = _field(None, "folder of 3-6 photos of the subject")
    instance_prompt: str = _field("a photo of sks dog", "training prompt; must contain the identifier")
    identifier: str = _field("sks", "rare token that names the subject inside prompts")
    class_prompt: str = _field("a photo of dog", "prompt of the subject's class, for prior preservation")
    prior_preservation: bool = _field(False, "add a class-image batch with the prior loss (DreamBooth)")
    num_class_images: int = _field(100, "class images generated once with the base model and cached")
    class_dir: str | None = _field(None, "class-image folder: its images (your own class photos, any name) are "
                                         "used first, class_<k>.png generated to top it up to num_class_images "
                                         "(default: a cache under ~/.cache/rewardbooth)")
    class_num_inference_steps: int = _field(25, "sampler steps used to generate class images")
    resolution: int = _field(512, "training resolution in pixels; a multiple of the VAE factor (with aspect_buckets: "
                                  "each bucket keeps about resolution^2 pixels)")
    center_crop: bool = _field(True, "center crop after resizing the short side (else resize the whole image); "
                                     "with aspect_buckets: crop the little left over from the nearest bucket")
    aspect_buckets: bool | tuple[str, ...] = _field(
        False, "train each photo at the size of ~resolution^2 px nearest its shape instead of its centre square: "
               "true (kohya's sizes, sides multiples of the model's step: FLUX/SD3 16 px, SD 64), or a list such "
               "as [512x512, 448x576]; a step's batch comes from one bucket, class images are cropped to it")
    caption_identifier: Literal["insert", "require"] = _field(
        "insert", "a photo's caption (photo.txt beside photo.jpg) without the identifier: 'insert' puts it before "
                  "the class noun ('a dog' -> 'a sks dog'), or prepends 'sks dog, '; 'require' refuses the caption")
    caption_dropout: float = _field(
        0.0, "probability that a captioned photo trains with its concept's bare prompt (instance_prompt; class "
             "photos: class_prompt) instead of its caption, so the identifier alone carries the subject")
    random_flip: bool = _field(True, "random horizontal flips")
    scene_prompts: str | None = _field(
        None, "prompts without photos, for objective.scene_share: 'objects', 'live' (shipped lists), 'toy', or a "
              "file with one prompt per line ({subject} = 'sks dog'); never DreamBench's prompts (docs/rewards.md)")
    concepts: tuple[ConceptConfig, ...] = _field(
        (), "more subjects trained in the same run (Custom Diffusion's multi-concept training), each "
            "{instance_dir, instance_prompt, identifier, class_prompt}; the first subject is the one above")

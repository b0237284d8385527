"""The run's images: every concept's photos (with their captions) and class images, as the training sets the
batches draw from, sized by data.resolution or, with data.aspect_buckets, by bucket (docs/data.md).

Photos are read and checked before the model loads (a bad caption fails before anything slow); they become
tensors once the model says its size step. Without buckets every image is the centre square of side
data.resolution, as it always was; with them, one image set per bucket that holds a photo, and the class
images cropped to each of those buckets, since a step's instance and prior rows share one latent shape.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from PIL import Image

from rewardbooth.core.config import Config, DataConfig
from rewardbooth.core.errors import UserError
from rewardbooth.data import images as subject_data
from rewardbooth.data.buckets import Bucket, buckets_of, fit_to_bucket, nearest_bucket
from rewardbooth.data.captions import class_captions, instance_captions
from rewardbooth.data.concepts import check_concepts, concept_data, concepts_of
from rewardbooth.models import ModelParts
from rewardbooth.models.families import conditioning_of_prompts
from rewardbooth.training.batches import ImageSet, TrainingData, with_flips
from rewardbooth.training.class_images import class_image_dir, generate_class_images, read_class_images
from rewardbooth.training.prompt_only import scene_prompts

logger = logging.getLogger(__name__)


@dataclass
class Photos:
    """One concept's photos (or class images) as read: each with the prompt it trains with (its caption, or
    the concept's prompt), and the concept's prompt itself (`fallback`: caption dropout's, and the key of the
    concept's scene prompts)."""

    images: list[Image.Image]
    prompts: list[str]
    fallback: str

    def squares(self, data: DataConfig) -> torch.Tensor:
        """Every image as the centre square of side data.resolution. Shape: -> (N, 3, R, R)"""
        return torch.stack([subject_data.image_to_tensor(image, data.resolution, data.center_crop)
                            for image in self.images])


def load_subjects(config: Config) -> list[Photos]:
    """Every concept's photos and their prompts, the main subject first; refuses a bad identifier or caption."""
    check_concepts(config.data)
    subjects = []
    for concept in concepts_of(config.data):
        subject_data.check_identifier(concept.instance_prompt, concept.identifier)
        if config.data.prior_preservation and subject_data.names_identifier(concept.class_prompt, concept.identifier):
            # Class images of "a photo of sks dog" teach the model the subject, not the class it must keep.
            raise UserError(f"class prompt {concept.class_prompt!r} contains the identifier {concept.identifier!r}, "
                            f"which defeats prior preservation; name the class only (e.g. 'a photo of dog')")
        loaded = subject_data.load_subject_images(concept.instance_dir)
        warn_if_small(loaded, config.data.resolution)
        prompts = instance_captions([path for path, _ in loaded], concept.instance_prompt, concept.identifier,
                                    config.data.caption_identifier)
        subjects.append(Photos([image for _, image in loaded], prompts, concept.instance_prompt))
    captioned = sum(prompt != subject.fallback for subject in subjects for prompt in subject.prompts)
    if captioned:
        logger.info("%d photo(s) train with their own caption (data.caption_identifier=%s)", captioned,
                    config.data.caption_identifier)
    elif config.data.caption_dropout > 0:
        logger.warning("data.caption_dropout=%g has no effect: no photo has a caption file (photo.txt beside "
                       "photo.jpg)", config.data.caption_dropout)
    return subjects


def load_concepts(config: Config) -> list[torch.Tensor]:
    """Every concept's photos as squares, the main subject first: what rewards and critics compare with.
    Shape: -> [(N_k, 3, R, R) float32 in [0, 1]]"""
    return [subject.squares(config.data) for subject in load_subjects(config)]


def warn_if_small(images: list[tuple[Path, object]], resolution: int) -> None:
    """Photos far smaller than the training resolution are upscaled into a blur that the model then learns."""
    small = sorted(((min(image.size), path, image.size) for path, image in images if min(image.size) * 2 < resolution),
                   key=lambda entry: entry[0])
    if small:
        side, path, (width, height) = small[0]
        logger.warning("%d of %d photos are far below data.resolution=%d (smallest: '%s', %dx%d px, upscaled %.0fx), "
                       "so the subject will be learnt blurry; use photos of at least %d px", len(small), len(images),
                       resolution, path, width, height, resolution / side, resolution // 2)


def run_buckets(config: Config, parts: ModelParts) -> list[Bucket] | None:
    """The run's buckets (None when data.aspect_buckets is off), checked against the model's size step."""
    return buckets_of(config.data.aspect_buckets, config.data.resolution, parts.family.resolution_multiple(parts))


def build_training_data(config: Config, parts: ModelParts, subjects: list[Photos], concept_images: list[torch.Tensor],
                        trained_encoders: tuple[str, ...], accelerator: Accelerator) -> TrainingData:
    """The instance and prior sets (one pair per bucket), every prompt's conditioning, and the draws' options."""
    data_config = config.data
    concepts = concepts_of(data_config)
    classes = None
    if data_config.prior_preservation:
        classes = [load_class_photos(parts, concept_data(data_config, concept), accelerator) for concept in concepts]
    buckets = run_buckets(config, parts)
    if buckets is None:
        instance = [image_set(subjects, concept_images, config, parts)]
        prior = [image_set(classes, [c.squares(data_config) for c in classes], config, parts)] if classes else None
        sizes = None
    else:
        owners = [[nearest_bucket(*image.size, buckets) for image in subject.images] for subject in subjects]
        used = sorted({bucket for owned in owners for bucket in owned})
        log_buckets([bucket for owned in owners for bucket in owned])
        instance = [image_set(*photos_in(subjects, owners, bucket), config, parts, bucket) for bucket in used]
        prior = [image_set(classes, None, config, parts, bucket) for bucket in used] if classes else None
        sizes = [(bucket.height, bucket.width) for bucket in used]
    scenes = scene_prompts(config)  # prompts without photos, per concept (objective.scene_share)
    prompts = [prompt for c in concepts for prompt in (c.instance_prompt, c.class_prompt) if prompt]
    prompts = list(dict.fromkeys([*prompts, *(prompt for sets in (instance, prior or []) for one in sets
                                              for prompt in one.prompts)]))  # captions: one embedding each
    prompts += [prompt for options in scenes.values() for prompt in options if prompt not in prompts]
    # Frozen text encoders give the same embedding every step: the family computes it once per prompt.
    conditioning = conditioning_of_prompts(parts, prompts, trained_encoders)
    return TrainingData(parts.vae, parts.latent_space, parts.process, instance, prior, conditioning,
                        seed=config.train.seed, scenes=scenes, scene_share=config.objective.scene_share,
                        caption_dropout=data_config.caption_dropout, sizes=sizes)


def photos_in(subjects: list[Photos], owners: list[list[Bucket]], bucket: Bucket) -> tuple[list[Photos], None]:
    """Each concept's photos that belong to `bucket` (a concept with none there is left out)."""
    selected = []
    for subject, owned in zip(subjects, owners, strict=True):
        rows = [index for index, owner in enumerate(owned) if owner == bucket]
        if rows:
            selected.append(Photos([subject.images[i] for i in rows], [subject.prompts[i] for i in rows],
                                   subject.fallback))
    return selected, None


def image_set(groups: list[Photos], tensors: list[torch.Tensor] | None, config: Config, parts: ModelParts,
              bucket: Bucket | None = None) -> ImageSet:
    """One image set over several concepts' images (their tensors, or fitted to `bucket`), each labelled with
    its own prompt; mirrored copies follow each concept's images when data.random_flip is on."""
    data = config.data
    if tensors is None:
        tensors = [torch.stack([fit_to_bucket(image, bucket, data.center_crop) for image in group.images])
                   for group in groups]
    copies = 2 if data.random_flip else 1  # with_flips: every image, then every image mirrored
    labels = [prompt for group in groups for prompt in group.prompts * copies]
    fallbacks = [group.fallback for group in groups for _ in range(len(group.prompts) * copies)]
    pixels = torch.cat([with_flips(images, data.random_flip) for images in tensors])
    return ImageSet(pixels, labels, parts.vae, cache=config.train.cache_latents, fallbacks=fallbacks)


def log_buckets(owners: list[Bucket]) -> None:
    counts = Counter(owners)
    logger.info("aspect buckets: %s", ", ".join(f"{bucket} ({count} photo{'s' * (count > 1)})"
                                                for bucket, count in sorted(counts.items())))


def load_class_photos(parts: ModelParts, data_config: DataConfig, accelerator: Accelerator) -> Photos:
    """One concept's class images, generated once by the main process and cached, with their captions."""
    folder = class_image_dir(data_config, parts.source)
    if accelerator.is_main_process:
        generate_class_images(parts, data_config, folder, accelerator.device)
    accelerator.wait_for_everyone()
    loaded = read_class_images(folder, data_config.num_class_images)  # a user's own photos too; corrupt ones skipped
    prompts = class_captions([path for path, _ in loaded], data_config.class_prompt, data_config.identifier)
    return Photos([image for _, image in loaded], prompts, data_config.class_prompt)

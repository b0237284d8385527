"""DreamBench's metrics as image scorers: `dino`, `clip_image`, `clip_text` (Ruiz et al. 2023, DreamBooth §4.1).

- DINO: mean pairwise cosine between the final-layer CLS features of a DINO ViT (default ViT-S/16, no pooler)
  of each generated image and of each real photo of the subject.
- CLIP-I: the same with CLIP's projected image embeddings (default ViT-B/32).
- CLIP-T: cosine between CLIP's image embedding and the text embedding of the prompt with the identifier word
  removed, unscaled (not ×100 as CLIPScore prints it, nor ×2.5 as in Hessel et al. 2021).

Feature extractors (`DinoFeatures`, `ClipFeatures`) are kept apart from the scoring so the evaluator can
reuse them; the cosine maths is `rewardbooth.maths.similarity`. Backbones come from the `model` option, a
local folder or a hub id, loaded once with the real `from_pretrained` (tests save tiny random models of the
same classes); each scorer embeds the reference photos once at construction. They score images
(`score_images`); training scores decode(x0_hat) through `OnDecodedImages`. All three are differentiable
(networks on the image): under
`objective.name=dpg` their scores only train the critic (no graph is built); `direct` backpropagates
through backbone and VAE decoder (ReFL / DRaFT style), and the critic diagnostics compare dQ/da with
their gradient. The backbones are frozen: a gradient reaches the image, never their weights.
Samples never interact (eval mode: no dropout, no batch statistics), so a score does not depend on how a
batch is split.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rewardbooth.core.errors import UserError
from rewardbooth.data.images import remove_identifier
from rewardbooth.maths.similarity import max_cosine_to_references, mean_cosine_to_references, paired_cosine
from rewardbooth.rewards.base import RewardOutput, RewardSetup, rewards
from rewardbooth.rewards.preprocess import clip_preprocess, dino_preprocess

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_DINO = "facebook/dino-vits16"
DEFAULT_CLIP = "openai/clip-vit-base-patch32"


def _hub_offline() -> bool:
    # Read at call time: huggingface_hub reads it once at import, which may precede the user's setting.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _fix_advice(reward: str, model: str) -> str:
    return (f"pass a local folder saved with save_pretrained through objective.reward_options, "
            f"e.g. {{{reward}: {{model: /path/to/{Path(model).name or 'backbone'}}}}}")


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def load_pretrained(loader: Any, model: str, reward: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(model)`` failing as one UserError line that names the option to change."""
    source = str(Path(model).expanduser()) if Path(model).expanduser().exists() else model
    try:
        return loader.from_pretrained(source, local_files_only=_hub_offline(), **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure here means the user's folder or hub id is wrong
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        if Path(source).exists():
            where = first_line
        else:
            where = "no such folder" if _looks_like_path(model) else f"no such folder; as a hub id: {first_line}"
        raise UserError(f"reward {reward!r}: cannot load model {model!r} ({where}); "
                        f"{_fix_advice(reward, model)}") from None


def load_backbone(model_class: Any, model: str, reward: str, device: torch.device, dtype: str,
                  **kwargs: Any) -> torch.nn.Module:
    """A frozen backbone in eval mode on ``device``; a checkpoint of another architecture is refused.

    transformers fills weights missing from a checkpoint with random ones and only logs it, so a folder
    holding the wrong model would otherwise yield a reward that silently scores noise.
    """
    if dtype not in DTYPES:
        raise UserError(f"reward {reward!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    network, info = load_pretrained(model_class, model, reward, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise UserError(f"reward {reward!r}: {model!r} is not a {model_class.__name__} checkpoint "
                        f"({len(missing)} weights missing, e.g. {missing[0]!r}); {_fix_advice(reward, model)}")
    return network.to(device=device, dtype=DTYPES[dtype]).eval().requires_grad_(False)


def _side(image_size: int | tuple[int, int] | list[int]) -> int:
    """A config's ``image_size`` as one side: the backbones here are trained on square crops."""
    return int(image_size) if isinstance(image_size, int) else int(image_size[0])


class DinoFeatures:
    """L2-normalised CLS token of a DINO ViT's final layer, after DINO's evaluation preprocessing.

    Shape: images (B, 3, H, W) in [0, 1] -> (B, D) float32, unit length.
    """

    def __init__(self, model: str, device: torch.device, dtype: str = "float32", reward: str = "dino"):
        from transformers import ViTModel

        # DreamBench uses the final layer's CLS token itself; the pooler (a dense + tanh head) is not DINO's.
        self.network = load_backbone(ViTModel, model, reward, device, dtype, add_pooling_layer=False)
        self.crop_size = _side(self.network.config.image_size)
        self.device, self.dtype = device, DTYPES[dtype]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = dino_preprocess(images.to(self.device), self.crop_size)
        hidden = self.network(pixel_values=pixels.to(self.dtype)).last_hidden_state  # (B, 1 + patches, D)
        return F.normalize(hidden[:, 0].float(), dim=-1)


class ClipFeatures:
    """CLIP's projected image (and optionally text) embeddings, L2-normalised.

    Built from a ``CLIPModel`` checkpoint (the form the OpenAI weights are published in). The text tower is
    kept only when ``with_text``: CLIP-I has no use for its memory.
    """

    def __init__(self, model: str, device: torch.device, dtype: str = "float32", reward: str = "clip_image",
                 with_text: bool = False):
        from transformers import CLIPModel, CLIPTokenizer

        network = load_backbone(CLIPModel, model, reward, device, dtype)
        self.vision_model, self.visual_projection = network.vision_model, network.visual_projection
        self.image_size = _side(network.config.vision_config.image_size)
        self.device, self.dtype = device, DTYPES[dtype]
        if with_text:
            self.text_model, self.text_projection = network.text_model, network.text_projection
            self.tokenizer = load_pretrained(CLIPTokenizer, model, reward)
            self.max_length = self._check_tokenizer(network.config.text_config, model, reward)

    def _check_tokenizer(self, text_config: Any, model: str, reward: str) -> int:
        # from_pretrained on a folder without tokenizer files returns a tokenizer of special tokens only.
        if len(self.tokenizer.get_vocab()) <= len(set(self.tokenizer.all_special_tokens)):
            raise UserError(f"reward {reward!r}: no CLIP tokenizer files (vocab.json, merges.txt or "
                            f"tokenizer.json) in {model!r}; {_fix_advice(reward, model)}")
        if len(self.tokenizer) > text_config.vocab_size:
            raise UserError(f"reward {reward!r}: the tokenizer in {model!r} has {len(self.tokenizer)} tokens, "
                            f"more than the text model's {text_config.vocab_size}")
        # A tokenizer saved without model_max_length reports a huge sentinel; the position table is the limit.
        return min(self.tokenizer.model_max_length, text_config.max_position_embeddings)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """Shape: (B, 3, H, W) in [0, 1] -> (B, D) float32, unit length."""
        pixels = clip_preprocess(images.to(self.device), self.image_size)
        pooled = self.vision_model(pixel_values=pixels.to(self.dtype)).pooler_output
        return F.normalize(self.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def text(self, prompt: str) -> torch.Tensor:
        """One prompt -> (D,) float32, unit length. One at a time, so no padding can change the result."""
        tokens = self.tokenizer(prompt, truncation=True, max_length=self.max_length, return_tensors="pt")
        pooled = self.text_model(input_ids=tokens["input_ids"].to(self.device),
                                 attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
        return F.normalize(self.text_projection(pooled).float(), dim=-1)[0]


class ReferenceSimilarityReward:
    """Mean cosine between each image's embedding and each reference photo's (DreamBench's pairwise average).

    Diagnostics: ``max_cosine``, the similarity to the best-matching reference photo.
    """

    differentiable = True
    kind = "image"
    name = "reference_similarity"

    def __init__(self, embed_fn: Callable[[torch.Tensor], torch.Tensor], setup: RewardSetup):
        self.embed_fn = embed_fn
        with torch.no_grad():
            self.references = embed_fn(setup.reference_images)  # (N, D) unit length, computed once

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        features = self.embed_fn(images)  # (B, D)
        return RewardOutput(mean_cosine_to_references(features, self.references).to(images.device),
                            {"max_cosine": max_cosine_to_references(features, self.references).to(images.device)})


@rewards.register("dino")
class DinoReward(ReferenceSimilarityReward):
    """DreamBench's DINO score: subject fidelity as seen by a self-supervised ViT (default DINO ViT-S/16)."""

    name = "dino"

    def __init__(self, setup: RewardSetup, model: str = DEFAULT_DINO, dtype: str = "float32"):
        super().__init__(DinoFeatures(model, setup.device, dtype, reward=self.name), setup)


@rewards.register("clip_image")
class ClipImageReward(ReferenceSimilarityReward):
    """DreamBench's CLIP-I score: subject fidelity as seen by CLIP's image tower (default ViT-B/32)."""

    name = "clip_image"

    def __init__(self, setup: RewardSetup, model: str = DEFAULT_CLIP, dtype: str = "float32"):
        super().__init__(ClipFeatures(model, setup.device, dtype, reward=self.name).images, setup)


@rewards.register("clip_text")
class ClipTextReward:
    """DreamBench's CLIP-T score: does the image show what the prompt, without the identifier, asks for.

    The identifier (e.g. 'sks') is a rare token CLIP never learned a meaning for, so it is removed before
    encoding, as the protocol does. Text embeddings are cached per distinct prompt: training cycles through a
    handful of prompts, and the text tower then runs once for each.
    """

    differentiable = True
    kind = "image"

    def __init__(self, setup: RewardSetup, model: str = DEFAULT_CLIP, dtype: str = "float32"):
        self.features = ClipFeatures(model, setup.device, dtype, reward="clip_text", with_text=True)
        self.identifier = setup.identifier
        self._text_embeddings: dict[str, torch.Tensor] = {}

    def text_embedding(self, prompt: str) -> torch.Tensor:
        """Shape: prompt -> (D,) float32, unit length: the embedding of the prompt without the identifier."""
        text = remove_identifier(prompt, self.identifier)
        if text not in self._text_embeddings:
            self._text_embeddings[text] = self.features.text(text)
        return self._text_embeddings[text]

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        features = self.features.images(images)  # (B, D)
        texts = torch.stack([self.text_embedding(prompt) for prompt in prompts])  # (B, D)
        return RewardOutput(paired_cosine(features, texts).to(images.device))

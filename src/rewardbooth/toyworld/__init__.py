"""The toy world: a procedural image world small enough to pretrain, personalize and judge on a laptop.

Images are 32x32 RGB, one object on a background:

- classes: ball (disc), box (square), cone (triangle), star, ring, cross, diamond, moon (crescent), drawn as
  flat silhouettes with a thin darker rim;
- colours: red, green, blue, yellow, purple, orange, white, black, pink (the plain body colour);
- sizes: small, large; positions: left, center, right;
- scenes: beach, snow, grass, night, checker (floor), brick (wall), water (underwater), desert.

Captions follow one grammar, "a <size> <colour> <class> <position phrase> <scene phrase>", e.g. "a large red
ball on the left on the beach"; in training, any attribute but the class may be left out ("a ball in the
snow"). `world.VOCABULARY` lists every word of every caption and prompt, the identifier excepted.

Subjects (`subjects.make_subject`) are specific instances never seen in pretraining: a class and colour with a
structured pattern (two-tone split, stripes, dots, an off-centre mark or a thick contrasting rim) and unusual
proportions, each with reference views and 25 DreamBench-style evaluation prompts ("a sks ball in the snow",
"a purple sks ball").
"""

from rewardbooth.toyworld.subjects import (
    IDENTIFIER,
    PATTERN_KINDS,
    Pattern,
    Subject,
    class_prompt,
    instance_prompt,
    make_subject,
    prompt_set,
    reference_images,
    write_subject,
)
from rewardbooth.toyworld.world import (
    CLASSES,
    COLOURS,
    POSITIONS,
    RESOLUTION,
    SCENES,
    SIZES,
    VOCABULARY,
    Scene,
    caption,
    make_dataset,
    render,
    render_background,
    sample_pair,
    sample_scene,
)

__all__ = [
    "CLASSES",
    "COLOURS",
    "IDENTIFIER",
    "PATTERN_KINDS",
    "POSITIONS",
    "RESOLUTION",
    "SCENES",
    "SIZES",
    "VOCABULARY",
    "Pattern",
    "Scene",
    "Subject",
    "caption",
    "class_prompt",
    "instance_prompt",
    "make_dataset",
    "make_subject",
    "prompt_set",
    "reference_images",
    "render",
    "render_background",
    "sample_pair",
    "sample_scene",
    "write_subject",
]

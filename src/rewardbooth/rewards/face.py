"""`face`: how much the face in an image looks like the subject's, by dlib's face-recognition ResNet.

dlib works fully offline: its HOG frontal-face detector is built in, and the `face_recognition_models`
package ships the 5-point landmark model (aligns the face chip) and the ResNet that maps a face to a 128-d
descriptor (99.38 % on LFW, dlib's dnn_face_recognition_ex.cpp). dlib's own rule is that two descriptors less
than 0.6 apart (Euclidean) belong to the same person; measured here, the same face at another size and
mirrored lies ~0.25 apart, different people ~0.75 (median).

Score: 1 - distance to the mean descriptor of the reference photos, so higher is better, the same-person
threshold sits at 0.4 and a typical stranger near 0.25. A sample with no detected face scores
``no_face_score`` (default 0.0, as if 1.0 away: worse than a stranger, so the critic learns that losing the
face is the worst outcome). Diagnostics per sample: ``face_found`` (1/0) and ``distance`` (for a sample
without a face, the distance its score stands for, so the logs stay free of NaN).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch

from rewardbooth.core.errors import UserError
from rewardbooth.rewards.base import RewardOutput, RewardSetup, require_module, rewards

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'rewardbooth[face]'"
SHAPE_PREDICTOR = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


def face_models_folder() -> Path:
    """Where `face_recognition_models` keeps its .dat files, found without importing it: its ``__init__``
    imports ``pkg_resources``, which current setuptools no longer provides."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise UserError(f"the 'face' reward needs the 'face_recognition_models' package: {INSTALL_HINT}")
    folder = Path(spec.origin).parent / "models"
    missing = [name for name in (SHAPE_PREDICTOR, RECOGNITION_MODEL) if not (folder / name).is_file()]
    if missing:
        raise UserError(f"the 'face' reward cannot find {', '.join(missing)} in {folder}; reinstall with "
                        f"{INSTALL_HINT}")
    return folder


def to_uint8_images(images: torch.Tensor) -> list[np.ndarray]:
    """dlib's image format. Shape: (B, 3, H, W) float in [0, 1] -> B arrays (H, W, 3) uint8, C-contiguous."""
    pixels = (images.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return [np.ascontiguousarray(image) for image in pixels.permute(0, 2, 3, 1).cpu().numpy()]


@rewards.register("face")
class FaceIdentityReward:
    """1 - Euclidean distance between dlib face descriptors of the sample and of the subject's photos."""

    differentiable = False
    kind = "image"

    def __init__(self, setup: RewardSetup, no_face_score: float = 0.0, upsample: int = 1):
        dlib = require_module("dlib", "face", INSTALL_HINT)
        folder = face_models_folder()
        if upsample < 0:
            raise UserError(f"reward 'face': upsample must be 0 or more, not {upsample}")
        self.no_face_score = float(no_face_score)
        # Each upsampling doubles the image before detection: 1 finds faces down to ~40 px, which a reduced
        # decode resolution produces.
        self.upsample = int(upsample)
        self.detector = dlib.get_frontal_face_detector()
        self.shape_predictor = dlib.shape_predictor(str(folder / SHAPE_PREDICTOR))
        self.encoder = dlib.face_recognition_model_v1(str(folder / RECOGNITION_MODEL))
        self.reference = self._reference_descriptor(setup.reference_images)

    def _reference_descriptor(self, reference_images: torch.Tensor) -> np.ndarray:
        descriptors = [self.describe(image) for image in to_uint8_images(reference_images)]
        found = [descriptor for descriptor in descriptors if descriptor is not None]
        if not found:
            raise UserError(f"reward 'face': no face found in any of the {len(descriptors)} reference photos; "
                            f"use photos with a visible frontal face, or another reward")
        if len(found) < len(descriptors):
            logger.warning("reward 'face': no face found in %d of %d reference photos; using the other %d",
                           len(descriptors) - len(found), len(descriptors), len(found))
        return np.mean(found, axis=0)  # (128,)

    def describe(self, image: np.ndarray) -> np.ndarray | None:
        """The 128-d descriptor of the most confident face in an (H, W, 3) uint8 image, or None without one.

        The most confident rather than the largest: HOG boxes come in a few discrete sizes, so sizes often
        tie, and a confident face should beat a same-sized false detection (as on skimage's astronaut photo).
        """
        boxes, confidences, _ = self.detector.run(image, self.upsample, 0.0)
        if len(boxes) == 0:
            return None
        box = boxes[int(np.argmax(confidences))]
        shape = self.shape_predictor(image, box)
        # num_jitters=0: one deterministic pass, so a score does not change between calls.
        return np.asarray(self.encoder.compute_face_descriptor(image, shape, num_jitters=0), dtype=np.float64)

    def _score(self, image: np.ndarray) -> tuple[float, float, float]:
        descriptor = self.describe(image)
        if descriptor is None:
            return self.no_face_score, 1.0 - self.no_face_score, 0.0
        distance = float(np.linalg.norm(descriptor - self.reference))
        return 1.0 - distance, distance, 1.0

    @torch.no_grad()
    def score_images(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        rows = [self._score(image) for image in to_uint8_images(images)]
        table = torch.tensor(rows, dtype=torch.float32, device=images.device).reshape(-1, 3)  # (B, 3)
        scores, distances, found = table.unbind(dim=1)
        return RewardOutput(scores, {"face_found": found, "distance": distances})

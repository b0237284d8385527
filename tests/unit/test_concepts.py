"""Several concepts in one run: config, per-concept data and rewards, and multi-concept Custom Diffusion end
to end with a per-concept image reward (CPU, no network)."""

import re

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from helpers import run_cli, save_tiny_vit, tiny_args
from rewardbooth.core.config import load_config
from rewardbooth.core.errors import UserError
from rewardbooth.data.concepts import concept_index, concepts_of
from rewardbooth.rewards import RewardContext, RewardOutput
from rewardbooth.rewards.concepts import PerConcept

SECOND = "{instance_dir: %s, instance_prompt: 'a photo of <new2> cat', identifier: '<new2>', class_prompt: 'a photo of cat'}"
FIRST = ["data.identifier=<new1>", "data.instance_prompt=a photo of <new1> dog"]


@pytest.fixture(scope="module")
def second_subject(tmp_path_factory):
    from rewardbooth.data.images import make_example_subject

    folder = tmp_path_factory.mktemp("second-subject")
    make_example_subject(folder, num_images=3, size=64, seed=5)
    return folder


def test_concepts_parse_and_list_the_main_subject_first(second_subject):
    config = load_config("default", [*FIRST, f"data.concepts=[{SECOND % second_subject}]"])
    concepts = concepts_of(config.data)
    assert [c.identifier for c in concepts] == ["<new1>", "<new2>"]
    assert concepts[1].instance_dir == str(second_subject) and concepts[1].class_prompt == "a photo of cat"


@pytest.mark.parametrize("concept, message", [
    ("{instance_dir: x, identifier: '<new2>'}", r"data.concepts\[0\] has no instance_prompt"),
    ("{instance_dir: x, instance_prompt: 'a <new2> cat', identifier: '<new2>'}", r"has no class_prompt"),
    ("{instance_dir: x, instance_prompt: 'a <new1> cat', identifier: '<new1>', class_prompt: a cat}",
     "share the identifier '<new1>'"),
    ("{instance_dir: x, instance_prompt: 'a photo of <new1> dog', identifier: '<new2>', class_prompt: a cat}",
     "share the instance_prompt"),
])
def test_incomplete_or_ambiguous_concepts_are_one_line_errors(concept, message, subject_dir, tmp_path, capsys):
    assert run_cli(tiny_args(subject_dir, tmp_path / "run", *FIRST, f"data.concepts=[{concept}]")) == 2
    assert re.search(message, capsys.readouterr().err) and not (tmp_path / "run").exists()


def test_unknown_concept_key_names_the_key():
    with pytest.raises(UserError, match="unknown config key 'data.concepts.folder'"):
        load_config("default", ["data.concepts=[{folder: x}]"])


def test_concept_index_routes_by_the_first_identifier_named():
    identifiers = ["<new1>", "<new2>"]
    assert concept_index("a <new2> cat", identifiers) == 1
    assert concept_index("a <new1> dog and a <new2> cat", identifiers) == 0
    assert concept_index("a dog", identifiers) == 0  # no identifier: the first concept


class ConstantReward:
    """Scores every sample with `value` * mean(x0_hat): differentiable, with one diagnostic."""

    differentiable = True

    def __init__(self, value):
        self.value = value

    def __call__(self, x0_hat, context):
        scores = self.value * x0_hat.mean(dim=(1, 2, 3))
        return RewardOutput(scores, {"seen": torch.full_like(scores, float(len(scores)))})


def test_per_concept_reward_scores_each_sample_with_its_concepts_reward_and_keeps_the_graph():
    reward = PerConcept(["<new1>", "<new2>"], [ConstantReward(1.0), ConstantReward(-2.0)])
    x0_hat = torch.ones(3, 4, 2, 2, requires_grad=True)
    prompts = ["a <new2> cat", "a <new1> dog", "a <new2> cat on grass"]
    output = reward(x0_hat, RewardContext(x0=torch.zeros(3, 4, 2, 2), prompts=prompts))
    assert output.scores.tolist() == [-2.0, 1.0, -2.0]
    assert output.diagnostics["seen"].tolist() == [2.0, 1.0, 2.0]  # each reward saw only its own samples
    output.scores.sum().backward()
    assert torch.allclose(x0_hat.grad.mean(dim=(1, 2, 3)), torch.tensor([-2.0, 1.0, -2.0]) / 16)
    assert reward.differentiable


class ConstantScorer:
    """An image scorer: `value` * mean brightness, with one diagnostic."""

    differentiable = True

    def __init__(self, value):
        self.value = value

    def score_images(self, images, prompts):
        scores = self.value * images.mean(dim=(1, 2, 3))
        return RewardOutput(scores, {"seen": torch.full_like(scores, float(len(scores)))})


def test_per_concept_image_scorers_route_images_and_prompts_alike():
    from rewardbooth.rewards import RewardSetup, kind_of
    from rewardbooth.rewards.concepts import PerConceptImages, build_concept_reward

    setups = [RewardSetup(torch.zeros(1, 3, 2, 2), identifier, torch.device("cpu")) for identifier in ("<new1>", "<new2>")]
    values = iter([1.0, -2.0])
    scorer = build_concept_reward(lambda setup: ConstantScorer(next(values)), setups)
    assert isinstance(scorer, PerConceptImages) and kind_of(scorer) == "image" and scorer.differentiable
    images = torch.ones(3, 3, 2, 2, requires_grad=True)
    output = scorer.score_images(images, ["a <new2> cat", "a <new1> dog", "a <new2> cat on grass"])
    assert output.scores.tolist() == [-2.0, 1.0, -2.0] and output.diagnostics["seen"].tolist() == [2.0, 1.0, 2.0]
    output.scores.sum().backward()
    assert torch.allclose(images.grad.mean(dim=(1, 2, 3)), torch.tensor([-2.0, 1.0, -2.0]) / 12)
    latent = build_concept_reward(lambda setup: ConstantReward(1.0), setups)
    assert isinstance(latent, PerConcept) and kind_of(latent) == "latent"


def test_batches_draw_every_concepts_photos_with_their_own_prompts(subject_dir, second_subject, tmp_path):
    from rewardbooth.training.setup import build_run

    config = load_config("default", tiny_args(subject_dir, tmp_path / "x", *FIRST, "data.prior_preservation=true",
                                              f"data.concepts=[{SECOND % second_subject}]")[2:])
    run = build_run(config)
    assert run.data.instance.size == 2 * (4 + 3)  # both concepts' photos, each also mirrored
    assert set(run.data.conditioning) == {"a photo of <new1> dog", "a photo of dog", "a photo of <new2> cat",
                                          "a photo of cat"}
    drawn = {prompt for step in range(12) for prompt in run.data.draw(step, 0, 2, 0, 1).prompts}
    assert drawn == set(run.data.conditioning)


def test_multi_concept_custom_diffusion_with_a_per_concept_image_reward(tiny_folder, subject_dir, second_subject,
                                                                        tmp_path):
    vit = save_tiny_vit(tmp_path / "vit")
    out = tmp_path / "run"
    assert run_cli(tiny_args(
        subject_dir, out, f"model.pretrained={tiny_folder}", "method.name=custom_diffusion", *FIRST,
        f"data.concepts=[{SECOND % second_subject}]", "objective.reward={look_forward: 1, dino: 0.5}",
        f"objective.reward_options={{dino: {{model: '{vit}'}}}}", "critic.input=state_action",
        "validation.every=2", "validation.reward=dino", f"validation.reward_options={{dino: {{model: '{vit}'}}}}",
        "train.max_steps=4", "train.lr=1e-3")) == 0
    assert load_config(out / "config.yaml").data.concepts[0].identifier == "<new2>"  # the saved config reloads
    logged = (out / "metrics.jsonl").read_text()
    assert '"reward/dino"' in logged and '"val/score"' in logged
    # Two new tokens, each in its own file, loaded by the stock calls next to the shared K/V weights.
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_folder)
    base_table = pipeline.text_encoder.get_input_embeddings().weight.detach().clone()
    pipeline.unet.load_attn_procs(out, weight_name="pytorch_custom_diffusion_weights.safetensors")
    for token in ("<new1>", "<new2>"):
        pipeline.load_textual_inversion(out, weight_name=f"{token}.safetensors")
    table = pipeline.text_encoder.get_input_embeddings().weight
    ids = pipeline.tokenizer.convert_tokens_to_ids(["<new1>", "<new2>"])
    assert ids == [len(base_table), len(base_table) + 1] and torch.equal(table[: len(base_table)], base_table)
    first, second = (load_file(out / f"{token}.safetensors")[token] for token in ("<new1>", "<new2>"))
    assert torch.equal(table[ids[0]], first) and torch.equal(table[ids[1]], second)
    assert not torch.equal(first, second)  # both started from the initializer word; each learned its own
    # The validation grid shows both concepts (one row per concept's instance prompt).
    assert (out / "samples" / "step_000000.png").is_file()


def test_the_shipped_multi_concept_example_is_a_valid_config():
    from pathlib import Path

    from rewardbooth.core.config import check_values
    from rewardbooth.data.concepts import check_concepts

    config = load_config(Path(__file__).parents[2] / "examples" / "custom-diffusion-two-concepts.yaml")
    check_values(config)
    check_concepts(config.data)
    assert [c.identifier for c in concepts_of(config.data)] == ["<new1>", "<new2>"]
    assert config.method.name == "custom_diffusion" and config.validation.mix == "harmonic"
    assert config.method.custom_diffusion.params == "kv"  # the nested method options (0.1.0)

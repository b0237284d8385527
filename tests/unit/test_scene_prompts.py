"""Prompts without photos never are the evaluation prompts: string-level for DreamBench's lists, attribute-level
for the toy world (its few scenes make strings meaningless), and a user's file is held to the same rule."""

import pytest

from rewardbooth.core.errors import UserError
from rewardbooth.data import dreambench
from rewardbooth.data.scene_prompts import (
    SHIPPED,
    held_out_contexts,
    scene_prompts_per_concept,
    scene_templates,
    shipped_templates,
    subject_phrase,
)
from rewardbooth.toyworld import subjects
from rewardbooth.toyworld.judge import prompt_attributes


@pytest.mark.parametrize("family", sorted(SHIPPED))
def test_shipped_scene_prompts_share_no_prompt_and_no_context_with_dreambench(family):
    assert not set(SHIPPED[family]) & dreambench.context_phrases()
    for subject in dreambench.SUBJECT_CLASSES:
        evaluation = set(dreambench.prompts_for(subject, "sks"))
        phrase = f"sks {dreambench.subject_class(subject)}"
        training = {template.replace("{subject}", phrase) for template in shipped_templates(family)}
        assert not training & evaluation, subject


def toy_attributes(prompts):
    named = [prompt_attributes(prompt) for prompt in prompts]
    return {key: {attributes[key] for attributes in named if key in attributes} for key in ("scene", "position")}


@pytest.mark.parametrize("index", range(100, 108))
def test_toy_scene_prompts_name_no_scene_or_position_the_held_out_evaluation_names(index):
    subject = subjects.make_subject(index)
    concepts = [(subjects.instance_prompt(subject), subjects.IDENTIFIER)]
    training = scene_prompts_per_concept(scene_templates("toy", subjects.scene_templates()), concepts,
                                         held_out_contexts("toy"))[concepts[0][0]]
    trained, evaluated = toy_attributes(training), toy_attributes(subjects.held_out_prompt_set(subject))
    assert trained["scene"] and trained["position"]
    assert not trained["scene"] & evaluated["scene"] and not trained["position"] & evaluated["position"]
    # What is held out is still evaluated: every scene and position the training prompts never name.
    assert evaluated["scene"] == set(subjects.SCENES) - set(subjects.TRAINING_SCENES)
    assert evaluated["position"] == set(subjects.POSITIONS) - set(subjects.TRAINING_POSITIONS)
    assert all(prompt.startswith(f"a {subjects.IDENTIFIER} {subject.object_class} ") for prompt in training)


def test_scene_prompts_carry_each_concepts_identifier(tmp_path):
    concepts = [("a photo of sks dog", "sks"), ("a <new1> cat", "<new1>")]
    lists = scene_prompts_per_concept(["a {subject} on a kitchen table", "a <new1> cat at a picnic"], concepts)
    assert lists == {"a photo of sks dog": ["a sks dog on a kitchen table"],
                     "a <new1> cat": ["a <new1> cat on a kitchen table", "a <new1> cat at a picnic"]}
    assert subject_phrase("a photo of sks dog", "sks") == "sks dog"


@pytest.mark.parametrize("lines, message", [
    (["a sks dog on the beach"], "is a DreamBench evaluation prompt"),
    (["a dog on a kitchen table"], "names no concept's identifier"),
])
def test_a_users_scene_prompt_file_is_refused_in_one_line(tmp_path, lines, message):
    path = tmp_path / "scenes.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=message):
        scene_prompts_per_concept(scene_templates(str(path), []), [("a photo of sks dog", "sks")])


def test_an_unknown_scene_prompt_source_is_refused(tmp_path):
    with pytest.raises(UserError, match="neither objects, live, toy nor a file"):
        scene_templates(str(tmp_path / "missing.txt"), [])

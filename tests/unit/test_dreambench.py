"""DreamBench's published subjects, classes and prompt lists (google/dreambooth dataset/prompts_and_classes.txt)."""

import pytest

from rewardbooth.core.errors import UserError
from rewardbooth.data import dreambench


def test_thirty_subjects_nine_live():
    assert len(dreambench.SUBJECT_CLASSES) == 30
    live = [s for s in dreambench.SUBJECT_CLASSES if dreambench.is_live(s)]
    assert sorted(live) == ["cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]
    assert dreambench.SUBJECT_CLASSES["bear_plushie"] == "stuffed animal"
    assert dreambench.SUBJECT_CLASSES["pink_sunglasses"] == "glasses"
    assert sum(c == "toy" for c in dreambench.SUBJECT_CLASSES.values()) == 5


def test_prompt_lists_as_published():
    objects, live = dreambench.prompts_for("teapot"), dreambench.prompts_for("dog3", identifier="zwx")
    assert len(objects) == len(live) == 25 and len(set(objects)) == 25
    assert objects[0] == "a sks teapot in the jungle" and objects[-1] == "a cube shaped sks teapot"
    assert objects[12] == "a sks teapot with the Eiffel Tower in the background"
    assert live[10] == "a zwx dog wearing a red hat" and live[19] == "a zwx dog in a purple wizard outfit"
    # Same first 10 and last 5 prompts, different middle 10.
    same = [o.replace("sks teapot", "X") == v.replace("zwx dog", "X") for o, v in zip(objects, live)]
    assert same == [True] * 10 + [False] * 10 + [True] * 5
    assert all(" sks teapot" in p for p in objects) and all(" zwx dog" in p for p in live)
    assert dreambench.prompts_for("bear_plushie")[1] == "a sks stuffed animal in the snow"


def test_unknown_subject_and_prompt_files(tmp_path):
    with pytest.raises(UserError, match="unknown DreamBench subject 'dog4'"):
        dreambench.prompts_for("dog4")
    path = tmp_path / "prompts.txt"
    path.write_text("# mine\na sks dog in space\n\n  a sks dog on the moon  \n")
    assert dreambench.read_prompt_file(path) == ["a sks dog in space", "a sks dog on the moon"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserError, match="has no prompts"):
        dreambench.read_prompt_file(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="does not exist"):
        dreambench.read_prompt_file(tmp_path / "missing.txt")

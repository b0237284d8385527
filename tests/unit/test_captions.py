"""Per-image captions (photo.txt beside photo.jpg) and what they must say about the subject."""

import pytest

from rewardbooth.core.errors import UserError
from rewardbooth.data.captions import (
    class_captions,
    class_noun,
    instance_captions,
    read_caption,
    with_identifier,
)

PROMPT = "a photo of sks dog"


def test_caption_is_the_file_beside_the_image_with_whitespace_collapsed(tmp_path):
    (tmp_path / "photo.txt").write_text("\ufeffa dog\n  on a   sofa\n", encoding="utf-8")
    assert read_caption(tmp_path / "photo.jpg") == "a dog on a sofa"
    assert read_caption(tmp_path / "other.jpg") is None
    (tmp_path / "blank.txt").write_text(" \n")
    assert read_caption(tmp_path / "blank.png") is None  # an empty file is no caption


def test_a_caption_that_is_not_utf8_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "photo.txt").write_bytes(b"\xff\xfe\xfa caption")
    with pytest.raises(UserError) as error:
        read_caption(tmp_path / "photo.jpg")
    assert "photo.txt" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("caption,expected", [
    ("a dog on a sofa", "a sks dog on a sofa"),  # before the class noun
    ("A Dog in the snow", "A sks Dog in the snow"),
    ("sofa, window light", "sks dog, sofa, window light"),  # no class noun: kohya's trigger phrase first
    ("sks dog asleep", "sks dog asleep"),  # names it already: as written
    ("a dogsled", "sks dog, a dogsled"),  # the noun as a whole word only
])
def test_insert_completes_a_caption_without_the_identifier(caption, expected, tmp_path):
    assert with_identifier(caption, PROMPT, "sks", "insert", tmp_path / "p.txt") == expected


def test_insert_without_a_class_noun_prepends_the_identifier(tmp_path):
    assert class_noun("a photo of <new1>", "<new1>") is None
    assert with_identifier("on a sofa", "a photo of <new1>", "<new1>", "insert", tmp_path) == "<new1>, on a sofa"
    assert class_noun("a <new1> cat on a mat", "<new1>") == "cat"


def test_require_refuses_a_caption_without_the_identifier_in_one_line(tmp_path):
    assert with_identifier("sks dog asleep", PROMPT, "sks", "require", tmp_path / "a.txt") == "sks dog asleep"
    with pytest.raises(UserError) as error:
        with_identifier("a dog asleep", PROMPT, "sks", "require", tmp_path / "a.txt")
    message = str(error.value)
    assert "a.txt" in message and "data.caption_identifier=insert" in message and "\n" not in message


def test_photos_without_captions_keep_the_instance_prompt(tmp_path):
    (tmp_path / "b.txt").write_text("a dog running")
    prompts = instance_captions([tmp_path / "a.jpg", tmp_path / "b.jpg"], PROMPT, "sks", "insert")
    assert prompts == [PROMPT, "a sks dog running"]


def test_a_class_caption_naming_the_identifier_is_refused(tmp_path):
    (tmp_path / "c.txt").write_text("a dog in a park")
    assert class_captions([tmp_path / "c.png", tmp_path / "d.png"], "a photo of dog", "sks") == \
        ["a dog in a park", "a photo of dog"]
    (tmp_path / "c.txt").write_text("a sks dog in a park")
    with pytest.raises(UserError, match="defeats prior preservation"):
        class_captions([tmp_path / "c.png"], "a photo of dog", "sks")

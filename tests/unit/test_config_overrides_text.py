"""An override of a text field keeps its text when YAML would read it as a mapping (a folder named
`runs/x: y` or `a {b: 1}` is a path), while fields that take mappings still get them."""

from rewardbooth.core.config import load_config


def test_a_path_that_reads_as_yaml_mapping_stays_a_path():
    config = load_config("default", ["data.instance_dir=runs/route@objective.reward={toy_alignment: 1}/subject",
                                     "train.output_dir=out: one", "data.instance_prompt=a: sks dog"])
    assert config.data.instance_dir == "runs/route@objective.reward={toy_alignment: 1}/subject"
    assert str(config.train.output_dir) == "out: one" and config.data.instance_prompt == "a: sks dog"


def test_fields_that_take_mappings_and_nulls_still_do():
    config = load_config("default", ["objective.reward={toy_identity: 1, toy_alignment: 2}", "data.scene_prompts=null"])
    assert config.objective.reward == {"toy_identity": 1.0, "toy_alignment": 2.0} and config.data.scene_prompts is None

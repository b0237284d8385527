"""The FSDP branches of rewardbooth.training.sharding, with accelerate's distributed type stood in for: what a
sharded run refuses, the by-hand critic gradient average, and the gathered result (tests/integration/
test_fsdp.py runs them for real on two CPU processes)."""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from diffusers import FluxTransformer2DModel
from torch import nn
from torch.distributed.fsdp import FSDPModule

from rewardbooth.core.config import ModelConfig, load_config
from rewardbooth.core.errors import UserError
from rewardbooth.models import load_model
from rewardbooth.training import sharding

SHARDABLE = ["method.name=dreambooth", "method.train_text_encoder=false", "validation.every=0"]


def fake_accelerator(sharded=True, processes=2, main=True, state=None, reduce=None):
    return SimpleNamespace(distributed_type=DistributedType.FSDP if sharded else DistributedType.MULTI_CPU,
                           num_processes=processes, is_main_process=main, device=torch.device("cpu"),
                           get_state_dict=lambda model: state, reduce=reduce)


def test_a_sharded_dreambooth_run_is_accepted():
    sharding.check_sharded_run(load_config(None, SHARDABLE))


@pytest.mark.parametrize(("override", "named"), [
    ("method.name=lora", "method.name=lora"),
    ("method.train_text_encoder=true", "set method.train_text_encoder=false"),
    ("validation.every=50", "set validation.every=0"),
])
def test_what_a_sharded_run_cannot_do_is_refused_in_one_line(override, named):
    with pytest.raises(UserError) as refused:
        sharding.check_sharded_run(load_config(None, [*SHARDABLE, override]))
    assert named in str(refused.value) and "\n" not in str(refused.value)


def test_an_fsdp_launch_config_that_accelerate_ignored_is_reported(monkeypatch, caplog):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    sharding.warn_if_fsdp_ignored(fake_accelerator(sharded=False))
    assert "FSDP launch config is ignored by accelerate on cpu processes" in caplog.text
    caplog.clear()
    sharding.warn_if_fsdp_ignored(fake_accelerator(sharded=True))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    sharding.warn_if_fsdp_ignored(fake_accelerator(sharded=False))
    assert caplog.text == ""


def test_critic_gradients_are_replaced_by_their_mean_over_processes():
    critic = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    critic(torch.ones(4, 3)).sum().backward()
    critic[0].bias.grad = None  # a parameter without a gradient is left alone
    before = {name: p.grad.clone() for name, p in critic.named_parameters() if p.grad is not None}
    # The other process's gradients are 3x these: the mean over the two is 2x.
    sharding.average_gradients(fake_accelerator(reduce=lambda flat, op: (flat + 3 * flat) / 2), critic)
    for name, parameter in critic.named_parameters():
        if name in before:
            torch.testing.assert_close(parameter.grad, 2 * before[name])
    assert critic[0].bias.grad is None
    sharding.average_gradients(fake_accelerator(processes=1, reduce=None), critic)  # one process: nothing to do


def test_the_main_process_saves_a_whole_stock_copy_of_the_gathered_denoiser():
    parts = load_model(ModelConfig("tiny-flux"))
    state = {key: torch.full_like(value, 0.5) for key, value in parts.transformer.state_dict().items()}
    gathered = sharding.gathered_parts(fake_accelerator(state=state), parts, denoiser=None)
    assert type(gathered.transformer) is FluxTransformer2DModel and gathered.transformer is not parts.transformer
    assert all(torch.equal(value, state[key]) for key, value in gathered.transformer.state_dict().items())
    assert gathered.vae is parts.vae
    assert sharding.gathered_parts(fake_accelerator(state=state, main=False), parts, denoiser=None) is None
    assert sharding.gathered_parts(fake_accelerator(sharded=False), parts, denoiser=None) is parts


def test_a_sharded_modules_stock_class_is_the_one_fully_shard_subclassed():
    module = nn.Linear(1, 1)
    module.__class__ = type("FSDPLinear", (FSDPModule, nn.Linear), {})  # what fully_shard does to the instance
    assert sharding.stock_class(module) is nn.Linear
    assert sharding.stock_class(nn.Linear(1, 1)) is nn.Linear


@pytest.mark.parametrize(("example", "model"), [("fsdp-flux.yaml", "tiny-flux"), ("fsdp-sd3.yaml", "tiny-sd3")])
def test_each_example_fsdp_config_parses_and_wraps_blocks_its_family_has(example, model):
    from pathlib import Path

    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(Path(__file__).parents[2] / "examples" / "accelerate" / example)
    assert config.distributed_type == DistributedType.FSDP and config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    wrapped = set(config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","))
    present = {type(module).__name__ for module in load_model(ModelConfig(model)).denoiser.modules()}
    assert wrapped <= present  # accelerate refuses a listed class the model does not hold

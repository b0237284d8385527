import pytest

from rewardbooth.core.errors import UserError
from rewardbooth.core.registry import Registry


def make_thing():
    return "thing"


def test_names_dotted_paths_and_objects():
    registry = Registry("widget")
    registry.register("a")(make_thing)
    assert registry.get("a") is make_thing
    assert registry.get("test_registry:make_thing")() == "thing"
    assert registry.get(make_thing) is make_thing
    assert registry.names() == ["a"] and "a" in registry


def test_unknown_names_list_the_known_ones():
    registry = Registry("widget")
    registry.register("alpha")(make_thing)
    with pytest.raises(UserError, match="unknown widget 'beta': choose one of alpha"):
        registry.get("beta")
    with pytest.raises(UserError, match="cannot import widget"):
        registry.get("no_such_module_xyz:f")
    with pytest.raises(UserError, match="no callable 'missing'"):
        registry.get("test_registry:missing")


def test_double_registration_is_a_bug():
    registry = Registry("widget")
    registry.register("a")(make_thing)
    with pytest.raises(ValueError):
        registry.register("a")(make_thing)

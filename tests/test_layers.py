"""The package's shape: no import circles, the layer rules held, no module past 400 lines."""

import importlib.util
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "rewardbooth"
MAX_LINES = 400


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", SOURCE.parents[1] / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circles_and_no_layer_breaks():
    graph = _import_graph()
    edges = graph.graph()
    assert {"train", "cli", "models.families", "toyworld.world"} <= edges.keys()  # the graph is read at all
    assert "models.families" in edges["models.loaders"]
    assert graph.circles(edges) == []
    assert graph.rule_breaks(edges) == []


def test_the_checks_see_a_circle_and_a_break():
    graph = _import_graph()
    assert graph.circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert graph.rule_breaks({"toyworld.world": {"train"}, "sweep": {"toyworld.subjects"}, "bench": {"cli"}}) == [
        "bench imports the CLI", "the DreamBench sweep imports the toy world",
        "toy-world module toyworld.world imports training: train"]


def test_no_module_is_over_400_lines():
    long = {str(path.relative_to(SOURCE)): n for path in SOURCE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules: {long}"

"""The package's shape: no import circles, the layer rules held, no module past 400 lines."""

import importlib.util
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "rewardbooth"
MAX_LINES = 400


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", SOURCE.parents[1] / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circles_and_no_layer_breaks():
    graph = _import_graph()
    edges = graph.graph()
    assert {"training.loop", "cli", "models.families", "toyworld.world"} <= edges.keys()  # the graph is read at all
    assert "models.families" in edges["models.loaders"]
    assert graph.circles(edges) == []
    assert graph.rule_breaks(edges) == []


def test_the_checks_see_a_circle_and_a_break():
    graph = _import_graph()
    assert graph.circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert graph.rule_breaks({"toyworld.world": {"training.loop"}, "experiments.sweep": {"experiments.toyworld.benchmark"},
                              "experiments.bench": {"cli"}, "core.config": {"maths.dpg"}, "cli": {"core.errors"}}) == [
        "core.config (core) imports maths.dpg, a higher layer (maths)",
        "experiments.bench (experiments) imports cli, a higher layer (cli)",
        "the DreamBench experiments.sweep imports the toy world",
        "toyworld.world (toyworld) imports training.loop, a higher layer (training)"]
    assert graph.rule_breaks({"plugins.x": {"core.errors"}}) == [
        "plugins.x is in no layer: add its folder to LAYERS in tools/import_graph.py"]


def test_no_module_is_over_400_lines():
    long = {str(path.relative_to(SOURCE)): n for path in SOURCE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules: {long}"

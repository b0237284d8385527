"""The Pareto front the toy benchmark draws and reports, and its verdicts against the tuned DreamBooth."""

from rewardbooth.experiments.toyworld.benchmark import verdicts
from rewardbooth.maths.statistics import pareto_front


def test_the_front_keeps_only_points_no_other_beats_on_both():
    points = {"dreambooth": (0.70, 0.32), "base": (0.85, 0.13), "critic": (0.72, 0.42), "worse": (0.70, 0.30),
              "tie": (0.72, 0.42)}
    assert pareto_front(points) == ["critic", "tie", "base"]


def test_a_point_better_on_one_axis_only_stays_on_the_front():
    assert pareto_front({"a": (0.0, 1.0), "b": (1.0, 0.0)}) == ["a", "b"]
    assert pareto_front({"a": (0.0, 1.0), "b": (1.0, 1.0)}) == ["b"]


def comparison(fidelity_low, alignment_low):
    return {"heldout_fidelity": {"interval": [fidelity_low, 1.0]}, "heldout_alignment": {"interval": [alignment_low, 1.0]}}


def test_verdicts_read_the_lower_ends_against_the_tuned_dreambooth():
    text = verdicts({"m vs baseline-tuned": comparison(0.01, -0.019), "n vs baseline-tuned": comparison(-0.01, -0.03),
                     "m vs baseline": comparison(-1.0, -1.0)})
    assert "m: fidelity up, alignment holds" in text
    assert "n: fidelity not up, alignment does not hold" in text
    assert text.count(":") == 3  # the header's and one per method against the tuned DreamBooth only


def test_a_comparison_uses_the_pairs_both_sides_have():
    from rewardbooth.maths.statistics import paired_comparison

    runs = {(1, 0): 0.2, (1, 1): 0.4, (2, 0): -0.1}  # subject 2 lacks seed 1, subject 3 every seed
    comparison = paired_comparison(lambda subject, seed: runs.get((subject, seed)), [1, 2, 3], [0, 1])
    assert comparison["per_subject"] == [0.30000000000000004, -0.1] and comparison["subjects"] == 2


def test_a_tuning_variant_is_compared_with_its_routes_controls_and_the_route_itself():
    from rewardbooth.experiments.toyworld.benchmark import controls_of

    route = "direct-encoder-identity-scene-alignment"
    assert "baseline-tuned" in controls_of(route) and route not in controls_of(route)
    variant = controls_of(f"{route}@objective.instance_weight=4")
    assert variant == (*controls_of(route), route)
    assert controls_of("baseline@train.lr=2e-4") == ("baseline",)
    assert "no objective here is compared with baseline-tuned" in verdicts({"m vs baseline": comparison(0, 0)})

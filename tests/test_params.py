"""Parameter specs: coercion, ranges, per-task values, unknown names and methods."""
import pytest

from merging import ParameterError, UnknownMethodError, get_method, list_methods
from merging.params import Param, parse_assignments, resolve_params


def test_every_method_spec_is_complete_and_defaults_are_valid():
    methods = list_methods()
    assert {"averaging", "task_arithmetic", "ties", "dare", "tall", "consensus", "pcb"} <= {m.name for m in methods}
    for method in methods:
        assert method.summary and method.paper and method.title
        resolved = resolve_params(method.params, {}, num_tasks=3)
        for p in method.params:
            assert p.help
            value = resolved[p.name]
            for v in (value if p.per_task else [value]):
                if p.auto and v == "auto":
                    continue
                assert p.low is None or v >= p.low
                assert p.high is None or v <= p.high
                assert p.choices is None or v in p.choices


def test_paper_defaults():
    d = {m.name: m.defaults() for m in list_methods()}
    assert d["task_arithmetic"]["lam"] == 0.3
    assert d["ties"]["k"] == 20 and d["ties"]["merge"] == "mean"
    assert d["dare"]["p"] == 0.9 and d["dare"]["rescale"] == "inverse"
    assert d["consensus"]["k"] == 2 and d["tall"]["tall_lambda"] == 0.6
    assert d["pcb"]["r"] == 0.05 and d["pcb"]["clip_q"] == 0.01 and d["pcb"]["lam"] == 1.2


def test_auto_numbers():
    spec = Param("lam", float, "auto", "λ", low=0.0, high=5.0, auto=True)
    assert spec.coerce("auto") == "auto" and spec.coerce(" Auto ") == "auto" and spec.coerce("2.5") == 2.5
    with pytest.raises(ParameterError, match="lam: 6.0 is above the maximum 5.0"):
        spec.coerce(6)
    with pytest.raises(ParameterError, match="lam: expected 'auto' or a float, got 'often'"):
        spec.coerce("often")
    with pytest.raises(ParameterError, match="expected float"):
        Param("lam", float, 0.3, "λ").coerce("auto")  # only where the spec says so


def test_cli_strings_are_coerced():
    spec = get_method("ties").params
    out = resolve_params(spec, parse_assignments(["k=30", "merge=sum", "lam=0.5"]))
    assert out == {"k": 30.0, "merge": "sum", "lam": 0.5}
    assert resolve_params(get_method("dare").params, {"seed": "3"})["seed"] == 3


@pytest.mark.parametrize("given,message", [
    ({"k": "abc"}, "k: expected float"),
    ({"k": 150}, "above the maximum"),
    ({"k": -1}, "below the minimum"),
    ({"merge": "median"}, "must be one of mean, sum"),
    ({"kk": 1}, "unknown parameter.*kk.*takes: k, merge, lam"),
    ({"lam": float("nan")}, "expected float"),
])
def test_bad_values_are_named(given, message):
    with pytest.raises(ParameterError, match=message):
        resolve_params(get_method("ties").params, given)


def test_per_task_values():
    p = Param("lam", float, 1.0, "λt", low=0, high=3, per_task=True)
    assert p.coerce(0.5, 3) == [0.5, 0.5, 0.5]
    assert p.coerce("0.1,0.2,0.3", 3) == [0.1, 0.2, 0.3]
    assert p.coerce([0.7], 2) == [0.7, 0.7]
    with pytest.raises(ParameterError, match="expected 1 or 3 values"):
        p.coerce([0.1, 0.2], 3)
    with pytest.raises(ParameterError, match="above the maximum"):
        p.coerce("0.1,5", 2)


def test_int_and_bool_params():
    p = Param("n", int, 1, "n", low=0, high=10)
    assert p.coerce("4") == 4 and p.coerce(4.0) == 4
    with pytest.raises(ParameterError):
        p.coerce(2.5)
    with pytest.raises(ParameterError):
        p.coerce(True)
    b = Param("flag", bool, False, "flag")
    assert b.coerce("yes") is True and b.coerce("0") is False
    with pytest.raises(ParameterError):
        b.coerce("maybe")


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(UnknownMethodError, match="unknown merge method 'tiez'; available: .*ties"):
        get_method("tiez")
    assert get_method("Task-Arithmetic").name == "task_arithmetic"
    with pytest.raises(ParameterError, match="NAME=VALUE"):
        parse_assignments(["k20"])

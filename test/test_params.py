"""The parameter definition, config/kp3d.yaml and the node's declared parameters agree; bad values fail clearly.

After adding a parameter to kp3d_ros/core/params.py, rewrite the YAML and the README's parameter table with
`python test/test_params.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kp3d_ros.core import params
from kp3d_ros.core.params import NODE_NAME, ParameterError, load_params, validate

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "kp3d.yaml"
README = ROOT / "README.md"
TABLE_START, TABLE_END = "<!-- parameters: start (python test/test_params.py) -->", "<!-- parameters: end -->"


def _yaml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e") if "e" in text and "." not in text else text  # YAML 1.1 floats need a dot
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(float(v)) for v in value) + "]"
    return str(value)


def render_yaml() -> str:
    """config/kp3d.yaml from the parameter definition: nested by first name part, one comment per parameter."""
    lines = ["# kp3d_node parameters: every parameter with its default (kp3d_ros/core/params.py is the definition;",
             "# test/test_params.py checks this file against it; `python test/test_params.py` rewrites it). Use with",
             "#   kp3d_node --ros-args --params-file config/kp3d.yaml   or   kp3d run --params config/kp3d.yaml",
             f"{NODE_NAME}:", "  ros__parameters:"]
    groups: dict[str, list[params.ParamSpec]] = {}
    for spec in params.PARAMETERS:
        groups.setdefault(spec.name.split(".", 1)[0], []).append(spec)
    for group, specs in groups.items():
        lines.append(f"    {group}:")
        for spec in specs:
            limits = f" [{spec.min:g}, {spec.max:g}]" if spec.min is not None else ""
            choices = f" ({' | '.join(spec.choices)})" if spec.choices else ""
            lines.append(f"      # {spec.description}{limits}{choices}{' Read-only.' if spec.read_only else ''}")
            lines.append(f"      {spec.name.split('.', 1)[1]}: {_yaml_value(spec.default)}")
    return "\n".join(lines) + "\n"


def _type_name(value) -> str:
    if isinstance(value, list):
        return f"double[{len(value)}]"
    return {bool: "bool", int: "int", float: "double", str: "string"}[type(value)]


def render_markdown() -> str:
    """The README's parameter table from the parameter definition."""
    rows = ["| name | type | default | range / choices | read-only | description |", "|---|---|---|---|---|---|"]
    for spec in params.PARAMETERS:
        limits = f"{spec.min:g} … {spec.max:g}" if spec.min is not None else ""
        limits = ", ".join(f"`{c}`" for c in spec.choices) if spec.choices else limits
        default = f"`{_yaml_value(spec.default)}`"
        rows.append(f"| `{spec.name}` | {_type_name(spec.default)} | {default} | {limits} | "
                    f"{'yes' if spec.read_only else ''} | {spec.description} |")
    return "\n".join(rows) + "\n"


def readme_with_table(text: str) -> str:
    head, _, rest = text.partition(TABLE_START + "\n")
    _, _, tail = rest.partition(TABLE_END)
    return head + TABLE_START + "\n" + render_markdown() + TABLE_END + tail


def test_readme_lists_every_parameter():
    text = README.read_text()
    assert TABLE_START in text and TABLE_END in text
    assert readme_with_table(text) == text, "README parameter table is stale: run python test/test_params.py"


def test_yaml_lists_every_parameter_with_its_default():
    tree = yaml.safe_load(CONFIG.read_text())
    flat = params._flatten(tree[NODE_NAME]["ros__parameters"])
    assert set(flat) == set(params.defaults())
    assert load_params(CONFIG) == params.defaults()
    for name, value in flat.items():  # same YAML types as the defaults (float written as float, ...)
        assert type(value) is type(params.SPECS[name].default), name


def test_every_spec_is_consistent():
    for spec in params.PARAMETERS:
        assert validate(spec.name, spec.default) == spec.default
        assert spec.description.strip(), spec.name
        if spec.min is not None:
            assert spec.max is not None and spec.min <= spec.default <= spec.max, spec.name


@pytest.mark.parametrize(("name", "value", "match"), [
    ("roi.max_range", 1000.0, "outside"),
    ("detection.min_points", 2, "outside"),
    ("detection.min_points", 2.5, "integer"),
    ("flow.enabled", "yes", "true or false"),
    ("roi.min_range", float("nan"), "finite"),
    ("network.backend", "cuda", "one of"),
    ("camera.extrinsics", [0.0, 1.0], "list of 6"),
    ("no.such_parameter", 1, "unknown"),
])
def test_validate_rejects_bad_values(name, value, match):
    with pytest.raises(ParameterError, match=match):
        validate(name, value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "nan", "inf", True])
def test_every_list_and_double_parameter_rejects_non_finite_values(bad):
    """NaN, inf and the strings/bools that float() would accept, in every double and every list element."""
    numeric = [s for s in params.PARAMETERS if type(s.default) in (float, list)]
    assert any(isinstance(s.default, list) for s in numeric)
    for spec in numeric:
        if isinstance(spec.default, list):
            for i in range(len(spec.default)):
                value = list(spec.default)
                value[i] = bad
                with pytest.raises(ParameterError, match="finite"):
                    validate(spec.name, value)
        else:
            with pytest.raises(ParameterError, match="finite"):
                validate(spec.name, bad)
    # the same at start-up from a YAML file and from `--set` (YAML's .nan / .inf)
    with pytest.raises(ParameterError, match=r"camera\.extrinsics"):
        load_params(overrides=params.parse_overrides(["camera.extrinsics=[0, 0, .nan, 0, 0, 0]"]))
    with pytest.raises(ParameterError, match=r"roi\.z_max"):
        load_params(overrides=params.parse_overrides(["roi.z_max=.inf"]))


def test_non_finite_values_in_a_parameter_file_are_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"{NODE_NAME}:\n  ros__parameters:\n    camera:\n"
                    "      extrinsics: [0.0, .inf, 0.0, 0.0, 0.0, 0.0]\n")
    with pytest.raises(ParameterError, match="finite"):
        load_params(path)


def test_load_params_overrides_and_cross_checks(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"{NODE_NAME}:\n  ros__parameters:\n    roi:\n      max_range: 30\n    use_sim_time: true\n")
    loaded = load_params(path, {"network.backend": "onnxruntime"})
    assert loaded["roi.max_range"] == 30.0 and isinstance(loaded["roi.max_range"], float)
    assert loaded["network.backend"] == "onnxruntime"
    with pytest.raises(ParameterError, match="min_range must be below"):
        load_params(overrides={"roi.min_range": 30.0, "roi.max_range": 20.0})
    with pytest.raises(ParameterError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_node_declares_every_parameter_with_descriptor():
    pytest.importorskip("rclpy")
    from kp3d_ros.ros.node import _descriptor

    for spec in params.PARAMETERS:
        descriptor = _descriptor(spec)
        assert descriptor.read_only == spec.read_only
        assert descriptor.description.startswith(spec.description)
        if spec.min is not None and isinstance(spec.default, float):
            assert descriptor.floating_point_range[0].from_value == spec.min
        elif spec.min is not None:
            assert descriptor.integer_range[0].to_value == spec.max


def test_overrides_read_numbers_in_exponent_notation():
    """`--set adaptation.learning_rate=1e-4` (or the same in a params file): YAML 1.1 reads the string '1e-4'."""
    loaded = load_params(overrides=params.parse_overrides(["adaptation.learning_rate=1e-4", "roi.z_max=2E+0",
                                                           "network.model_path=1e5"]))
    assert loaded["adaptation.learning_rate"] == 1e-4 and loaded["roi.z_max"] == 2.0
    assert loaded["network.model_path"] == "1e5"  # a string parameter keeps its text
    with pytest.raises(ParameterError, match="finite number"):
        load_params(overrides={"adaptation.learning_rate": "1e-4x"})


if __name__ == "__main__":
    CONFIG.write_text(render_yaml())
    README.write_text(readme_with_table(README.read_text()))
    print(f"wrote {CONFIG} and the parameter table of {README}")

"""launch/pipeline.launch.py, config and RViz files: they compile, name what setup.py installs, and exist.

With `launch` and `launch_ros` importable (a ROS 2 install with this package installed), the launch
description is also generated for real.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "pipeline.launch.py"


def _console_scripts() -> set[str]:
    return set(re.findall(r'"(\w+) = kp3d_ros[\w.]*:\w+"', (ROOT / "setup.py").read_text()))


def _launch_tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _keyword_strings(tree: ast.Module, keyword: str) -> list[str]:
    return [kw.value.value for node in ast.walk(tree) if isinstance(node, ast.Call) for kw in node.keywords
            if kw.arg == keyword and isinstance(kw.value, ast.Constant)]


def test_launch_file_compiles_and_defines_the_entry_point():
    tree = _launch_tree()
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)


def test_launch_file_runs_installed_executables_and_files():
    tree = _launch_tree()
    ours = {e for e in _keyword_strings(tree, "executable") if e != "rviz2"}
    assert ours == {"kp3d_node", "kp3d_replay"}
    assert ours <= _console_scripts()
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert {"config", "kp3d.yaml", "rviz", "kp3d.rviz"} <= strings
    assert (ROOT / "config" / "kp3d.yaml").is_file() and (ROOT / "rviz" / "kp3d.rviz").is_file()
    arguments = {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", "") == "DeclareLaunchArgument"}
    assert {"params_file", "backend", "use_sim_time", "rviz", "bag", "points"} <= arguments


def _launch_function(name: str, **names):
    """A module-level function of the launch file, compiled on its own with `names` as its globals
    (it must not need launch itself)."""
    function = next(n for n in _launch_tree().body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace: dict = {"LaunchContext": object, **names}
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(LAUNCH), "exec"), namespace)
    return namespace[name]


def _context(**configurations: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(launch_configurations=configurations)


def test_replay_starts_for_any_bag_path_and_only_with_one():
    bag_given = _launch_function("bag_given")
    assert not bag_given(_context(bag="")) and not bag_given(_context(bag="  "))
    for path in ("demo.mcap", "/tmp/it's here.mcap", 'a"b\\c.db3'):  # a quote once broke a PythonExpression
        assert bag_given(_context(bag=path))
    replay = next(n for n in ast.walk(_launch_tree()) if isinstance(n, ast.Call)
                  and any(kw.arg == "executable" and getattr(kw.value, "value", None) == "kp3d_replay"
                          for kw in n.keywords))
    condition = next(kw.value for kw in replay.keywords if kw.arg == "condition")
    assert "bag_given" in ast.unparse(condition)


def test_backend_argument_overrides_the_params_file_only_when_given():
    given = _launch_function("backend_given")
    not_given = _launch_function("backend_not_given", backend_given=given)
    for value, overrides in (("", False), (" ", False), ("tensorrt", True), ("auto", True)):
        assert given(_context(backend=value)) is overrides and not_given(_context(backend=value)) is not overrides
    nodes = [n for n in ast.walk(_launch_tree()) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"
             and any(kw.arg == "condition" and "backend" in ast.unparse(kw.value) for kw in n.keywords)]
    assert len(nodes) == 2
    for node in nodes:
        parameters = ast.unparse(next(kw.value for kw in node.keywords if kw.arg == "parameters"))
        condition = ast.unparse(next(kw.value for kw in node.keywords if kw.arg == "condition"))
        assert ("network.backend" in parameters) == ("backend_not_given" not in condition)


def test_rviz_is_started_only_when_installed():
    """`rviz:=true` without rviz2 installed would abort the launch after kp3d_node started, leaving it running."""

    def found(package: str) -> str:
        return f"/opt/ros/kilted/{package}"

    def absent(package: str) -> str:
        raise KeyError(package)

    for prefix, installed in ((found, True), (absent, False)):
        package_installed = _launch_function("package_installed", get_package_prefix=prefix,
                                             PackageNotFoundError=KeyError)
        assert package_installed("rviz2") is installed
    guard = next(n for n in ast.walk(_launch_tree()) if isinstance(n, ast.If)
                 and ast.unparse(n.test) == "package_installed('rviz2')")
    assert "rviz2" in ast.unparse(guard.body[0]) and "LogInfo" in ast.unparse(guard.orelse[0])


def test_setup_installs_launch_config_rviz_and_models():
    setup = (ROOT / "setup.py").read_text()
    for folder in ("launch", "config", "rviz", "models"):
        assert f'share/{{PACKAGE}}/{folder}' in setup


def test_rviz_config_shows_every_output():
    config = yaml.safe_load((ROOT / "rviz" / "kp3d.rviz").read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "lidar"
    topics = {d["Topic"]["Value"]: d["Class"] for d in manager["Displays"] if "Topic" in d}
    assert topics["/points"] == "rviz_default_plugins/PointCloud2"
    assert topics["/kp3d_node/skeletons"] == "rviz_default_plugins/MarkerArray"
    assert topics["/kp3d_node/overlay"] == "rviz_default_plugins/Image"
    for name in ("keypoints", "segmentation", "scene_flow"):
        assert topics[f"/kp3d_node/{name}"] == "rviz_default_plugins/PointCloud2"
    parts = next(d for d in manager["Displays"] if d.get("Topic", {}).get("Value") == "/kp3d_node/segmentation")
    assert parts["Channel Name"] == "part"


def test_launch_description_generates_with_real_launch():
    pytest.importorskip("launch.actions")  # (the repo's launch/ folder alone is a namespace package)
    pytest.importorskip("launch_ros.actions")
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        get_package_share_directory("kp3d_ros")
    except (PackageNotFoundError, OSError):
        pytest.skip("kp3d_ros is not installed in an ament prefix")
    spec = importlib.util.spec_from_file_location("pipeline_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = [type(entity).__name__ for entity in description.entities]
    rviz2 = module.package_installed("rviz2")
    # kp3d_node twice (with and without a backend:= override; one starts), kp3d_replay, rviz2
    assert names.count("Node") == (4 if rviz2 else 3) and "DeclareLaunchArgument" in names
    assert rviz2 or "LogInfo" in names


def test_autostart_argument_reaches_the_node_as_lifecycle_autostart():
    """autostart:=true (default) brings kp3d_node to active; false leaves it to a lifecycle manager."""
    from kp3d_ros.core.params import SPECS

    tree = _launch_tree()
    declared = {n.args[0].value: n for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "DeclareLaunchArgument"}
    default = next(kw.value.value for kw in declared["autostart"].keywords if kw.arg == "default_value")
    assert default == "true" and SPECS["lifecycle.autostart"].default is True
    common = next(n for n in ast.walk(tree) if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "common")
    assert "'lifecycle.autostart': LaunchConfiguration('autostart')" in ast.unparse(common.value)

"""Finds the package's installed data files (config/, models/, rviz/, launch/) in one way everywhere.

Order: the source tree (a checkout, `pip install -e .`), the ament index (colcon install on a ROS
machine), then <prefix>/share/kp3d_ros for a pip install into a prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = "kp3d_ros"


def user_cache_dir(name: str) -> Path:
    """$KP3D_ROS_CACHE_DIR/<name> when set, else $XDG_CACHE_HOME/kp3d_ros/<name> (~/.cache/kp3d_ros/<name> when
    XDG_CACHE_HOME is unset or empty)."""
    if os.environ.get("KP3D_ROS_CACHE_DIR"):
        return Path(os.environ["KP3D_ROS_CACHE_DIR"]) / name
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / PACKAGE / name


def share_candidates(subdir: str, name: str) -> list[Path]:
    package_dir = Path(__file__).resolve().parent
    candidates = [package_dir.parent / subdir / name]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / subdir / name)
    except (ImportError, LookupError, OSError, ValueError):  # no ament index, or not installed through it
        pass
    candidates += [parent / "share" / PACKAGE / subdir / name for parent in package_dir.parents]
    return candidates


def find_share_file(subdir: str, name: str) -> Path:
    """The first existing file subdir/name; FileNotFoundError listing where it looked."""
    candidates = share_candidates(subdir, name)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{subdir}/{name} not found; looked in: {', '.join(map(str, candidates[:3]))}, ...")

"""Finds the package's installed data files (config/, models/, rviz/, launch/) in one way everywhere.

Order: the source tree (a checkout, `pip install -e .`), the ament index (colcon install on a ROS
machine), then <prefix>/share/kp3d_ros for a pip install into a prefix.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = "kp3d_ros"


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

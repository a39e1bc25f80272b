#!/usr/bin/env bash
# Sets up everything kp3d_ros needs on a fresh Debian 12 machine with Python 3.11, idempotently:
# Debian's libusb-1.0-0 (open3d), a .venv with the pinned packages (CPU torch, ROS 2 wheels), and
# the project itself in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
    echo "[setup] installing Debian package libusb-1.0-0 (needed by open3d)"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libusb-1.0-0 >/dev/null
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi

PIP_ARGS=(--disable-pip-version-check -q)
# The CPU torch wheel lies on disk on the project's machines; elsewhere pip takes it from PyPI.
[ -d /opt/wheels ] && PIP_ARGS+=(--find-links /opt/wheels)
echo "[setup] installing pinned requirements into .venv"
.venv/bin/python -m pip install "${PIP_ARGS[@]}" -r requirements.txt
.venv/bin/python -m pip install "${PIP_ARGS[@]}" --no-deps --no-build-isolation -e .
echo "[setup] done"

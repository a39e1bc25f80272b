"""Offline scene flow by optimisation, Neural Scene Flow Prior style (Li et al., NeurIPS 2021), in torch.

For one pair of clouds, a small MLP g maps each src point to its flow and is fitted from scratch to
minimise a truncated Chamfer distance between src + g(src) and dst; a second MLP h maps the moved points
back, and a cycle term asks h(src + g(src)) = -g(src). The MLP's smoothness is the prior. Optionally the
MLP only learns a residual on top of an initial flow (the real-time estimator's), which converges much
faster ("warm start"). Early stopping on the loss. Flows can be cached on disk per pair key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _mlp(hidden: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = 3
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    last = nn.Linear(width, 3)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*mods, last)


def truncated_chamfer(a: torch.Tensor, b: torch.Tensor, max_distance: float) -> torch.Tensor:
    """Symmetric Chamfer distance between (M, 3) and (K, 3); pairs farther than max_distance count as it."""
    d = torch.cdist(a, b)
    ab = d.min(1).values.clamp(max=max_distance)
    ba = d.min(0).values.clamp(max=max_distance)
    return (ab * ab).mean() + (ba * ba).mean()


class NeuralFlowOptimizer:
    """Per-pair flow fitting (see the module docstring)."""

    def __init__(self, hidden: int = 64, layers: int = 4, iterations: int = 400, lr: float = 3e-3,
                 patience: int = 40, min_delta: float = 1e-6, cycle_weight: float = 0.5,
                 max_distance: float = 0.3, seed: int = 0) -> None:
        if iterations < 1 or hidden < 1 or layers < 1:
            raise ValueError("iterations, hidden and layers must be positive")
        self.hidden, self.layers, self.iterations = hidden, layers, iterations
        self.lr, self.patience, self.min_delta = lr, patience, min_delta
        self.cycle_weight, self.max_distance, self.seed = cycle_weight, max_distance, seed
        self.last_iterations = 0

    def estimate(self, src: np.ndarray, dst: np.ndarray, init_flow: np.ndarray | None = None) -> np.ndarray:
        """Forward flow (M, 3) float32 of src (M, 3) towards dst (K, 3); init_flow (M, 3) warm-starts it."""
        src_t = _tensor("src", src)
        dst_t = _tensor("dst", dst)
        base = torch.zeros_like(src_t) if init_flow is None else _tensor("init_flow", init_flow)
        if base.shape != src_t.shape:
            raise ValueError(f"init_flow has shape {tuple(base.shape)}, expected {tuple(src_t.shape)}")
        torch.manual_seed(self.seed)
        centre = src_t.mean(0)
        g, h = _mlp(self.hidden, self.layers), _mlp(self.hidden, self.layers)
        params = list(g.parameters()) + (list(h.parameters()) if self.cycle_weight else [])
        opt = torch.optim.Adam(params, lr=self.lr)
        best, best_flow, stale = float("inf"), base, 0
        x = src_t - centre
        it = 0
        for it in range(1, self.iterations + 1):  # noqa: B007
            opt.zero_grad(set_to_none=True)
            flow = base + g(x)
            moved = src_t + flow
            loss = truncated_chamfer(moved, dst_t, self.max_distance)
            if self.cycle_weight:
                back = h(moved - centre)
                loss = loss + self.cycle_weight * ((back + flow) ** 2).sum(-1).mean()
            loss.backward()
            opt.step()
            value = float(loss.detach())
            if value < best - self.min_delta:
                best, best_flow, stale = value, flow.detach(), 0
            else:
                stale += 1
                if stale >= self.patience:
                    break
        self.last_iterations = it
        return best_flow.numpy().astype(np.float32)

    def estimate_pair(self, src: np.ndarray, dst: np.ndarray, init_forward: np.ndarray | None = None,
                      init_backward: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Forward flow of src and backward flow of dst."""
        return self.estimate(src, dst, init_forward), self.estimate(dst, src, init_backward)


def _tensor(name: str, array: np.ndarray) -> torch.Tensor:
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] < 3 or len(array) == 0:
        raise ValueError(f"{name}: expected a non-empty (M, 3) array, got shape {array.shape}")
    if not np.isfinite(array[:, :3]).all():
        raise ValueError(f"{name} has non-finite values")
    return torch.from_numpy(np.ascontiguousarray(array[:, :3], dtype=np.float32))


class FlowCache:
    """Flows on disk (one .npy per pair), keyed by a hash of both clouds and the method name."""

    def __init__(self, root: str | Path, method: str) -> None:
        self.root = Path(root)
        self.method = method
        self.root.mkdir(parents=True, exist_ok=True)

    def key(self, src: np.ndarray, dst: np.ndarray) -> str:
        digest = hashlib.sha1(self.method.encode())
        digest.update(np.ascontiguousarray(src, dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(dst, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def get_or_compute(self, src: np.ndarray, dst: np.ndarray, compute) -> np.ndarray:
        path = self.root / f"{self.key(src, dst)}.npy"
        if path.is_file():
            flow = np.load(path)
            if flow.shape == (len(src), 3):
                return flow
        flow = np.asarray(compute(src, dst), dtype=np.float32)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, flow)
        tmp.replace(path)
        return flow

"""Training throughput (samples/s, batch 32, one AdamW step) of network sizes and point counts on CPU.

Run: nice -n 5 .venv/bin/python benchmarks/network_train_speed.py [--threads 1]
Used to choose N and the network size (benchmarks/results/network.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional

from kp3d_ros.model.network import build_model, count_parameters

CANDIDATES = [
    ({"dim": 64, "depth": 3, "heads": 4}, 256),
    ({"dim": 64, "depth": 3, "heads": 4, "latents": 32}, 256),
    ({"dim": 64, "depth": 3, "heads": 4}, 192),
    ({"dim": 64, "depth": 3, "heads": 4}, 128),
    ({"dim": 96, "depth": 3, "heads": 4}, 128),
    ({"dim": 64, "depth": 4, "heads": 4}, 128),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}, batch 32, median of {args.steps} steps\n")
    print("| config | N | parameters | train samples/s |")
    print("|---|---|---|---|")
    for cfg, n in CANDIDATES:
        model = build_model(cfg)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x, y, s = torch.randn(32, n, 3), torch.randn(32, 14, 3), torch.randint(0, 15, (32, n))
        times = []
        for _ in range(args.steps + 1):
            t = time.perf_counter()
            kp, logits = model(x)
            loss = (kp - y).norm(dim=-1).mean() + functional.cross_entropy(logits.reshape(-1, 15), s.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        print(f"| {cfg} | {n} | {count_parameters(model)} | {32 / np.median(times[1:]):.0f} |")


if __name__ == "__main__":
    main()

"""torch.distributed for training: the training device, the process group torchrun describes,
DistributedDataParallel, and the few collectives the training loop needs. Outside torchrun (WORLD_SIZE
unset or 1) nothing is initialised and every helper is the identity, so a single-process run is exactly
the plain one.

Training on the CPU uses gloo; on CUDA GPUs each process takes the GPU of its LOCAL_RANK and NCCL.
The CUDA path has never run: no GPU machine has been lent to this project.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

TIMEOUT = timedelta(minutes=30)  # a collective waits this long for a slow rank (pair extraction, validation)
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank of world_size (0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = CPU  # the training device; collectives run on it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    def log(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """`log` on rank 0, a no-op elsewhere."""
        return log if self.is_main else (lambda _message: None)

    def per_rank(self, size: int, name: str) -> int:
        """A global batch of `size` (called `name` in the error) split over the ranks; it must divide."""
        if size % self.world_size:
            raise ValueError(f"{name} {size} is not a multiple of the {self.world_size} processes")
        return size // self.world_size

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to run training forward passes through: DistributedDataParallel over `model` when
        distributed (it averages gradients over the ranks in backward), else `model` itself."""
        if not self.distributed:
            return model
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def from_main(self, values: list[float]) -> list[float]:
        """Rank 0's values on every rank (so wall-clock decisions agree)."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def summed(self, values: list[float]) -> list[float]:
        """The element-wise sum of `values` over the ranks."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gathered(self, value: object) -> list[object]:
        """Every rank's `value` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = Ranks()


def training_device(name: str = "cpu") -> torch.device:
    """'cpu', 'cuda' (under torchrun the GPU of LOCAL_RANK) or 'auto' (cuda when there is a GPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda":
        raise ValueError(f"device must be cpu, cuda or auto, got {name!r}")
    if not torch.cuda.is_available():
        raise ValueError("device cuda: torch sees no CUDA GPU here")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def restart_warning(env: Mapping[str, str]) -> str | None:
    """Why a torchrun restart may fail to reconnect, or None. torchrun shares its rendezvous TCP store
    with the workers by default and keeps it across restarts, so restarted workers can read the dead
    ones' addresses (pytorch/pytorch#135712; seen here with gloo: connection refused or a hang)."""
    shared = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if shared and int(env.get("TORCHELASTIC_MAX_RESTARTS", 0)) > 0:
        return ("warning: torchrun --max-restarts with its shared TCP store: a restart can fail to reconnect; "
                "start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1")
    return None


@contextlib.contextmanager
def process_group(device: torch.device = CPU) -> Iterator[Ranks]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment)
    for the block, with gloo on the CPU and NCCL on a GPU; one process of its own without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        yield Ranks(device=device)
        return
    warning = restart_warning(os.environ)
    if warning and int(os.environ.get("RANK", 0)) == 0:
        print(warning, file=sys.stderr)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), device)
        dist.barrier()  # no rank tears its connections down while a peer still talks to it
    finally:
        # DistributedDataParallel wrappers left in reference cycles hold the group: freed at interpreter exit,
        # its worker threads could end the process with SIGABRT ("terminate called without an active exception").
        gc.collect()
        dist.destroy_process_group()

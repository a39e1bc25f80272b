"""Training under torchrun with real processes (gloo on this CPU): two processes with a global batch B
end with the weights of one process with batch B (in one agent, and as two agents meeting through a
c10d rendezvous, the multi-node form), a killed rank is restarted and the job resumes from
its last checkpoint, and a checkpoint written before distributed training existed still resumes."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tiny_stage1_data import TINY_MODEL, write_stage1_data

from kp3d_ros.model.checkpoint import load_payload
from kp3d_ros.synth.dataset import ShardedDataset
from kp3d_ros.train import stage1
from kp3d_ros.train.distributed import Ranks

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
PRE_DISTRIBUTED = Path(__file__).with_name("data") / "stage1_last_pre_distributed.pt"  # tiny run, commit 4b3be1d


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_stage1_data(tmp_path_factory.mktemp("stage1_data"))


def tiny_config(path: Path, data: Path, out: Path, epochs: int, seeding: str = "auto") -> Path:
    """The config of the pre-distributed checkpoint (model, N, batch 8, 3 steps an epoch), no time budget."""
    cfg = {"data": str(data), "out": str(out), "num_points": 32, "model": TINY_MODEL,
           "train": {"epochs": epochs, "steps_per_epoch": 3, "batch_size": 8, "warmup_steps": 2, "max_minutes": 0,
                     "sample_seeding": seeding},
           "val": {"max_samples": 16, "batch_size": 8}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def kp3d(*args: str, processes: int = 1, restarts: int = 0) -> list[str]:
    """The kp3d command line, under torchrun --standalone with `processes` > 1."""
    if processes == 1:
        return [sys.executable, "-m", "kp3d_ros.cli", *args]
    return [str(TORCHRUN), "--standalone", f"--nproc-per-node={processes}", f"--max-restarts={restarts}",
            "-m", "kp3d_ros.cli", *args]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def two_agents(*args: str, timeout: float = 240) -> list[str]:
    """kp3d as two torchrun agents of one process each, meeting through a c10d rendezvous: the multi-node
    form (--nnodes 2 --rdzv-backend c10d) with both "nodes" on this machine; their outputs."""
    rendezvous = [str(TORCHRUN), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                  f"--rdzv-endpoint=localhost:{free_port()}", "--rdzv-id=kp3d-test", "-m", "kp3d_ros.cli", *args]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    agents = [subprocess.Popen(rendezvous, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True) for _ in range(2)]
    outputs = [agent.communicate(timeout=timeout)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    return outputs


def run(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _largest_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())


def _last_logged(out: Path, name: str) -> float:
    with (out / "log.csv").open() as f:
        return float(list(csv.DictReader(f))[-1][name])


# Six AdamW steps amplify the rounding of the gradient all-reduce (measured: 1.6e-4 at most, 7e-6 after one
# step); other samples (the control) move the weights by 1.3e-2.
TOLERANCE = 1e-3


def test_two_processes_train_the_weights_of_one(data: Path, tmp_path: Path):
    one = tiny_config(tmp_path / "one.yaml", data, tmp_path / "one", epochs=2, seeding="per_sample")
    two = tiny_config(tmp_path / "two.yaml", data, tmp_path / "two", epochs=2)
    other = tiny_config(tmp_path / "other.yaml", data, tmp_path / "other", epochs=2, seeding="stream")
    run(kp3d("train", "stage1", "--config", str(one)))
    run(kp3d("train", "stage1", "--config", str(other)))
    done = run(kp3d("train", "stage1", "--config", str(two), processes=2))
    assert done.stdout.count("torchrun: 2 processes, 4 samples each per step") == 1  # rank 0 logs alone
    a, b = load_payload(tmp_path / "one" / "last.pt"), load_payload(tmp_path / "two" / "last.pt")
    assert (a["step"], b["step"]) == (6, 6)
    assert _largest_difference(a["state_dict"], b["state_dict"]) < TOLERANCE
    control = load_payload(tmp_path / "other" / "last.pt")["state_dict"]
    assert _largest_difference(a["state_dict"], control) > 5 * TOLERANCE
    assert not list((tmp_path / "two").glob("*.tmp"))  # checkpoints were written atomically
    for name in ("val_loss", "val_mpjpe_cm"):  # each rank validated half the batches; the sums agree
        assert _last_logged(tmp_path / "two", name) == pytest.approx(_last_logged(tmp_path / "one", name), rel=1e-3)
    nodes = tiny_config(tmp_path / "nodes.yaml", data, tmp_path / "nodes", epochs=2)
    outputs = two_agents("train", "stage1", "--config", str(nodes))
    assert sum(o.count("torchrun: 2 processes") for o in outputs) == 1
    assert _largest_difference(a["state_dict"], load_payload(tmp_path / "nodes" / "last.pt")["state_dict"]) < TOLERANCE


def test_a_pre_distributed_checkpoint_resumes_in_one_process(data: Path, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(PRE_DISTRIBUTED.read_bytes())
    cfg = yaml.safe_load(tiny_config(tmp_path / "c.yaml", data, out, epochs=2).read_text())
    lines: list[str] = []
    stage1.run(stage1.merge(stage1.load_config(None), cfg), resume=True, log=lines.append)
    assert any(x.startswith(f"resumed from {out / 'last.pt'}: epoch 1, step 3") for x in lines)
    assert load_payload(out / "last.pt")["step"] == 6


def _workers(agent: int) -> dict[int, int]:
    """rank -> pid of the torchrun agent's worker processes."""
    children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        if b"RANK" in env:
            ranks[int(env[b"RANK"])] = pid
    return ranks


def _epochs_logged(out: Path) -> int:
    path = out / "log.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


def test_a_killed_rank_restarts_and_the_job_resumes(data: Path, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(PRE_DISTRIBUTED.read_bytes())  # 2 processes resume today's checkpoints too
    config = tiny_config(tmp_path / "c.yaml", data, out, epochs=60)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    command = kp3d("train", "stage1", "--config", str(config), "--resume", processes=2, restarts=1)
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True) as agent:
        try:
            deadline = time.time() + 180
            while _epochs_logged(out) < 3:  # by this run (the copied checkpoint came without a log)
                assert agent.poll() is None, "the run ended before the kill"
                assert time.time() < deadline, "no epoch logged in time"
                time.sleep(0.1)
            killed_at = load_payload(out / "last.pt")["epoch"]
            os.kill(_workers(agent.pid)[1], signal.SIGKILL)
            output, _ = agent.communicate(timeout=240)
        finally:  # the agent and any worker it left behind (its session)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.pid, signal.SIGKILL)
    assert agent.returncode == 0, output[-3000:]
    resumed = [x for x in output.splitlines() if "resumed from" in x]
    assert len(resumed) == 2 and "epoch 1, step 3" in resumed[0], output[-3000:]
    assert int(resumed[1].split("epoch ")[1].split(",")[0]) >= killed_at
    final = load_payload(out / "last.pt")
    assert (final["epoch"], final["step"]) == (60, 180)


def test_batches_must_split_over_the_processes(data: Path, tmp_path: Path):
    cfg = stage1.merge(stage1.load_config(None), {"train": {"batch_size": 8}})
    with pytest.raises(ValueError, match=r"^train.batch_size 8 is not a multiple of the 3 processes$"):
        stage1.batch_source(ShardedDataset(data / "train"), cfg, None, Ranks(0, 3))
    with pytest.raises(ValueError, match="stream runs in one process"):
        stage1.batch_source(ShardedDataset(data / "train"), stage1.merge(cfg, {"train": {"sample_seeding": "stream"}}),
                            None, Ranks(0, 2))


def test_training_device_choices(data: Path, tmp_path: Path, capsys):
    from kp3d_ros.cli import main as kp3d_main
    from kp3d_ros.train.distributed import training_device

    assert training_device("cpu").type == "cpu"
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be cpu, cuda or auto, got 'tpu'"):
        training_device("tpu")
    if not torch.cuda.is_available():
        config = tiny_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1)
        assert kp3d_main(["train", "stage1", "--config", str(config), "--device", "cuda"]) == 1
        assert capsys.readouterr().out.strip() == "error: device cuda: torch sees no CUDA GPU here"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_one_gpu_trains_the_weights_of_the_cpu(data: Path, tmp_path: Path):
    """For the first GPU machine: Stage I on the GPU against the CPU (TF32 off), then 2 processes on it
    with NCCL when there are two GPUs."""
    torch.backends.cuda.matmul.allow_tf32 = False
    cfgs = {}
    for device in ("cpu", "cuda"):
        cfg = yaml.safe_load(tiny_config(tmp_path / f"{device}.yaml", data, tmp_path / device, epochs=2,
                                         seeding="per_sample").read_text())
        cfgs[device] = stage1.merge(stage1.load_config(None), cfg | {"device": device})
        stage1.run(cfgs[device], log=lambda _m: None)
    a, b = (load_payload(tmp_path / d / "last.pt")["state_dict"] for d in ("cpu", "cuda"))
    assert _largest_difference(a, b) < TOLERANCE
    if torch.cuda.device_count() >= 2:
        config = tiny_config(tmp_path / "two.yaml", data, tmp_path / "two", epochs=2)
        run(kp3d("train", "stage1", "--config", str(config), "--device", "cuda", processes=2))
        assert _largest_difference(a, load_payload(tmp_path / "two" / "last.pt")["state_dict"]) < TOLERANCE


def test_a_restart_warning_only_where_torchrun_shares_its_store_and_restarts():
    from kp3d_ros.train.distributed import restart_warning

    shared = {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "3"}
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in restart_warning(shared)
    assert restart_warning(shared | {"TORCHELASTIC_MAX_RESTARTS": "0"}) is None
    assert restart_warning(shared | {"TORCHELASTIC_USE_AGENT_STORE": "False"}) is None
    assert restart_warning({}) is None

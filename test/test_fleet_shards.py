"""Many bags split into shards, with real bags and the real pipeline: `kp3d infer --manifest --shard I/N`
writes one file per bag across the shards (each equal to a run on that bag alone), and Stage II pair
extraction over the ranks' shares of the bags finds exactly the pairs of one process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_infer import write_bag  # the infer tests' bag writer (/points with a few NaN rows)

from kp3d_ros.bench import simple_scene_frames
from kp3d_ros.cli import main as kp3d
from kp3d_ros.sharding import share_by_size, size_on_disk
from kp3d_ros.train import stage2
from kp3d_ros.train.distributed import Ranks

NUM_BAGS = 5  # uneven over 2 and 3 shares


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("fleet")
    paths = []
    for i in range(NUM_BAGS):
        paths.append(root / f"drive{i}")
        write_bag(paths[-1], simple_scene_frames(num_people=2, num_points=20000, num_frames=3, seed=10 + i))
    return paths


@pytest.fixture()
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"  # the stand-in cylinders need not look like people to the network
    path.write_text("kp3d_node:\n  ros__parameters:\n    detection:\n      min_body_share: 0.0\n")
    return path


def test_infer_shards_write_one_file_per_bag(bags: list[Path], params: Path, tmp_path: Path, capsys):
    from kp3d_ros.backends import factory

    try:
        factory.default_model_path()
    except FileNotFoundError as exc:
        pytest.skip(f"no shipped ONNX model: {exc}")
    manifest = tmp_path / "bags.txt"
    manifest.write_text("".join(f"{bag}\n" for bag in bags))
    common = ["--backend", "onnxruntime", "--threads", "1", "--params", str(params)]
    for index in range(3):
        assert kp3d(["infer", "--manifest", str(manifest), "--out-dir", str(tmp_path / "out"),
                     "--shard", f"{index}/3", *common]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"drive{i}.jsonl" for i in range(NUM_BAGS)]
    alone = tmp_path / "alone.jsonl"
    assert kp3d(["infer", str(bags[3]), "--out", str(alone), *common]) == 0
    assert (tmp_path / "out" / "drive3.jsonl").read_text() == alone.read_text()
    assert len(json.loads(alone.read_text().splitlines()[-1])["people"]) == 2
    capsys.readouterr()
    assert kp3d(["infer", "--manifest", str(manifest), "--out-dir", str(tmp_path / "out"), "--shard", "1/3",
                 *common]) == 0  # a rerun skips what is done
    assert capsys.readouterr().out.count("exists, skipping") == 2


def test_infer_refuses_bad_shards_and_manifests(bags: list[Path], tmp_path: Path, capsys):
    manifest = tmp_path / "bags.txt"
    manifest.write_text(f"{bags[0]}\n{tmp_path / 'lost.mcap'}\n")
    out = ["--out-dir", str(tmp_path / "out")]
    assert kp3d(["infer", "--manifest", str(manifest), *out]) == 2
    assert capsys.readouterr().err.strip().endswith("1 entries not found: line 2: " + str(tmp_path / "lost.mcap"))
    manifest.write_text(f"{bags[0]}\n")
    assert kp3d(["infer", "--manifest", str(manifest), *out, "--shard", "2/2"]) == 2
    assert "--shard expects I/N with 0 <= I < N" in capsys.readouterr().err
    assert kp3d(["infer", "--manifest", str(manifest)]) == 2
    assert "--manifest needs --out-dir" in capsys.readouterr().err
    assert kp3d(["infer", str(bags[0]), "--shard", "0/2", "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "--shard and --out-dir go with --manifest" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pair_extraction_shares_find_the_pairs_of_one_process(bags: list[Path]):
    cfg = stage2.load_config(None)
    quiet = lambda _message: None  # noqa: E731

    def pairs(ranks: Ranks) -> dict[int, list]:
        return {p[0].track: p for p in stage2.load_bag_pairs([str(b) for b in bags], cfg, log=quiet, ranks=ranks)}

    one = pairs(Ranks())
    assert len(one) >= NUM_BAGS and {t // 1_000_000 for t in one} == set(range(NUM_BAGS))
    for world in (2, 3):
        shares = [pairs(Ranks(rank, world)) for rank in range(world)]
        assert sum(map(len, shares)) == len(one)  # no track twice
        union = {k: v for s in shares for k, v in s.items()}
        assert sorted(union) == sorted(one)
        for track, expected in one.items():  # the same crops; the flow estimator's random point subsets
            assert len(union[track]) == len(expected)  # run on through a share's bags, so flows differ a little
            for got, want in zip(union[track], expected, strict=True):
                np.testing.assert_array_equal(got.src, want.src)
                np.testing.assert_array_equal(got.dst, want.dst)
                assert got.forward.shape == want.forward.shape


def test_stage2_on_two_processes_over_a_manifest(bags: list[Path], tmp_path: Path):
    from test_distributed_training import kp3d, run

    from kp3d_ros.model.checkpoint import load_payload

    manifest = tmp_path / "bags.txt"
    manifest.write_text("".join(f"{bag}\n" for bag in bags))
    tracks = stage2.load_bag_pairs([str(b) for b in bags], stage2.load_config(None), log=lambda _m: None)
    out = tmp_path / "run"
    args = ["train", "stage2", "--init", str(stage2.DEFAULTS["init"]), "--manifest", str(manifest), "--out",
            str(out), "--set", "train.steps_per_epoch=2", "train.batch_size=4", "train.max_minutes=0",
            "val_sequences=2"]
    done = run(kp3d(*args, "--epochs", "1", processes=2))
    pairs = sum(map(len, tracks))
    assert f"all 2 processes: {pairs} pairs from {len(tracks)} tracks" in done.stdout
    assert done.stdout.count("before: ") == 1  # rank 0 alone logs
    assert load_payload(out / "last.pt")["step"] == 2 and (out / "best.pt").is_file()
    assert done.stdout.count("# Stage II output: ") == 1  # every rank scores, rank 0 alone writes the choice
    selected = json.loads((out / "selection.json").read_text())["selected"]
    assert load_payload(out / "selected.pt")["meta"]["selected"] == selected
    done = run(kp3d(*args, "--epochs", "2", "--resume", processes=2))
    assert done.stdout.count(f"resumed from {out / 'last.pt'}: epoch 1, step 2") == 1
    assert load_payload(out / "last.pt")["step"] == 4


def test_pairs_cache_gives_back_the_extracted_pairs(bags: list[Path], tmp_path: Path):
    from kp3d_ros.train import pair_cache

    cfg = stage2.load_config(None) | {"pairs_cache": str(tmp_path / "cache")}
    lines: list[str] = []
    paths = [str(b) for b in bags]
    first = stage2.load_bag_pairs(paths, cfg, log=lines.append)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == NUM_BAGS
    again = stage2.load_bag_pairs(paths, cfg, log=lines.append)
    share = stage2.load_bag_pairs(paths, cfg, log=lines.append, ranks=Ranks(1, 2))
    assert lines[1].endswith(f"({NUM_BAGS} bags from {tmp_path / 'cache'})")
    positions = share_by_size(range(NUM_BAGS), [size_on_disk(b) for b in bags], 1, 2)
    mine = [t for t in first if t[0].track // 1_000_000 in positions]
    for want, got in [*zip(first, again, strict=True), *zip(mine, share, strict=True)]:
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):  # the flows too: the share loads what was extracted
            for name in ("src", "dst", "forward", "backward"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            assert (a.track, a.ground_z_t, a.ground_z_t1) == (b.track, b.ground_z_t, b.ground_z_t1)
    other_flow = cfg["flow"] | {"iterations": 9}
    assert pair_cache.cache_file(cfg["pairs_cache"], bags[0], "/points", other_flow) != \
        pair_cache.cache_file(cfg["pairs_cache"], bags[0], "/points", cfg["flow"])

"""Shares of inputs across ranks or jobs (kp3d_ros.sharding) and manifest files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kp3d_ros.sharding import parse_shard, read_manifest, share, share_by_size, size_on_disk


@pytest.mark.parametrize("items", [0, 1, 5, 7, 13])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shares_cover_every_input_exactly_once(items: int, count: int):
    inputs = [f"bag{i}" for i in range(items)]
    shares = [share(inputs, index, count) for index in range(count)]
    assert sorted(x for s in shares for x in s) == sorted(inputs)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert shares == [share(inputs, index, count) for index in range(count)]  # deterministic


@pytest.mark.parametrize("items", [0, 1, 5, 7, 13])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shares_by_size_cover_every_input_once_and_balance(items: int, count: int):
    sizes = [(37 * i) % 11 + 1 + (100 if i == 3 else 0) for i in range(items)]  # one long bag
    shares = [share_by_size(list(range(items)), sizes, index, count) for index in range(count)]
    assert sorted(x for s in shares for x in s) == list(range(items))
    assert all(s == sorted(s) for s in shares)  # in list order
    totals = [sum(sizes[i] for i in s) for s in shares]
    assert max(totals) - min(totals) <= max(sizes, default=0)  # greedy largest-first bound
    assert shares == [share_by_size(list(range(items)), sizes, index, count) for index in range(count)]


def test_share_by_size_puts_a_long_bag_alone():
    assert [share_by_size("abcd", [1, 9, 1, 1], k, 2) for k in range(2)] == [["b"], ["a", "c", "d"]]


def test_size_on_disk_of_files_and_bag_directories(tmp_path: Path):
    (tmp_path / "bag" / "sub").mkdir(parents=True)
    (tmp_path / "bag" / "a.mcap").write_bytes(b"x" * 10)
    (tmp_path / "bag" / "sub" / "b").write_bytes(b"x" * 5)
    assert size_on_disk(tmp_path / "bag") == 15 and size_on_disk(tmp_path / "bag" / "a.mcap") == 10


@pytest.mark.parametrize("spec", ["3/2", "2/2", "-1/2", "1", "a/b", "1/0", "", "1/2/3"])
def test_bad_shard_specs_get_a_one_line_reason(spec: str):
    with pytest.raises(ValueError, match=r"^--shard expects I/N with 0 <= I < N \(e.g. 0/4\), got ") as info:
        parse_shard(spec)
    assert "\n" not in str(info.value)


def test_good_shard_spec():
    assert parse_shard("0/1") == (0, 1) and parse_shard("7/8") == (7, 8)


def test_manifest_paths_comments_and_errors(tmp_path: Path):
    (tmp_path / "bags").mkdir()
    for name in ("a.mcap", "b.mcap"):
        (tmp_path / "bags" / name).write_bytes(b"")
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"# fleet day 1\nbags/a.mcap\n\n  {tmp_path / 'bags' / 'b.mcap'}  # absolute\n")
    assert read_manifest(manifest) == [tmp_path / "bags" / "a.mcap", tmp_path / "bags" / "b.mcap"]
    manifest.write_text("bags/a.mcap\nbags/gone.mcap\nbags/b.mcap\nalso_gone\n")
    with pytest.raises(FileNotFoundError, match=r"2 entries not found: line 2: .*gone.mcap; line 4: .*also_gone$"):
        read_manifest(manifest)
    manifest.write_text("bags/a.mcap\nbags/../bags/a.mcap\n")
    with pytest.raises(ValueError, match="line 2 repeats line 1"):
        read_manifest(manifest)
    manifest.write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists no inputs"):
        read_manifest(manifest)
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "none.txt")

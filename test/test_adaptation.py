"""Online adaptation: steps on a small buffer, weight swaps into a real ONNX Runtime backend, rollback
on an implausible update, reset to the source model on a slow drift, and a submit that never blocks."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from test_losses import cylinder_body, rot_z, standing_joints

from kp3d_ros.adaptation import OnlineAdapter
from kp3d_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
from kp3d_ros.core.params import defaults
from kp3d_ros.model.checkpoint import save_checkpoint
from kp3d_ros.model.export import export_checkpoint
from kp3d_ros.model.network import build_model

NUM_POINTS = 64


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("adapt")
    model = build_model({"dim": 16, "depth": 1, "heads": 2, "mlp_ratio": 2})
    save_checkpoint(root / "m.pt", model, {"num_points": NUM_POINTS})
    export_checkpoint(root / "m.pt", root / "m.onnx")
    return root / "m.pt", root / "m.onnx"


def params(**changes) -> dict:
    p = defaults()
    p.update({"adaptation.learning_rate": 1e-3, "adaptation.batch_size": 4, "adaptation.buffer_size": 16,
              "adaptation.min_interval_s": 0.0, "adaptation.deploy_on_signals": False})  # the other guards
    p.update(changes)
    return p


def person_pair(rng: np.random.Generator, track: int = 1):
    """A cylinder person at t and moved by 10 cm (+ a small turn) at t+1, with its exact motion."""
    joints = standing_joints() + np.array([8.0, rng.uniform(-1, 1), -1.9])
    points, _ = cylinder_body(joints, per_limb=8, seed=int(rng.integers(1 << 30)))
    centre = joints.mean(0)
    R = rot_z(rng.uniform(-0.2, 0.2))
    moved = (points - centre) @ R.T + centre + [0.1, 0.0, 0.0]
    return track, points.astype(np.float32), moved.astype(np.float32), (moved - points).astype(np.float32)


def probe(backend) -> np.ndarray:
    rng = np.random.default_rng(9)
    return backend.infer(rng.normal(0, 0.3, (2, NUM_POINTS, 3)).astype(np.float32)).keypoints


def test_steps_and_swap_change_backend_outputs(model_files, tmp_path):
    pt, onnx = model_files
    backend = OnnxRuntimeBackend(onnx, max_batch=4)
    adapter = OnlineAdapter(pt, backend, params(**{"adaptation.checkpoint_dir": str(tmp_path)}), start=False)
    rng = np.random.default_rng(0)
    for _ in range(15):
        assert adapter.submit(*person_pair(rng))
    state = adapter.state()
    assert state["held_back"] == 3 and state["buffer"] == 12
    before = probe(backend)
    assert adapter.step() and adapter.step() and adapter.step()
    assert not adapter.step()  # buffer used up
    assert adapter.state()["steps"] == 3 and np.isfinite(adapter.state()["last_loss"])
    # loose guards here: this test is about the swap itself
    adapter._acceptable = lambda candidate, good, *_: (bool(candidate["finite"]), "ok")
    assert adapter.consider_swap(force=True)
    after = probe(backend)
    assert adapter.state()["swaps"] == 1
    assert np.abs(after - before).max() > 1e-5
    # the backend now runs exactly the torch model's new weights
    x = np.random.default_rng(9).normal(0, 0.3, (2, NUM_POINTS, 3)).astype(np.float32)
    with torch.no_grad():
        expected = adapter.model(torch.from_numpy(x))[0].numpy()
    assert np.allclose(after, expected, atol=1e-4)
    assert (tmp_path / "adapted_last.pt").is_file()


def test_a_candidate_not_better_on_every_signal_is_held_not_deployed(model_files):
    """With adaptation.deploy_on_signals a candidate that passes the loss and plausibility guards but is not
    below the source on every label-free signal (here: the source's own weights, a tie) stays out of the
    backend; training goes on from it (no rollback) and the hold is counted and explained."""
    pt, onnx = model_files
    backend = OnnxRuntimeBackend(onnx, max_batch=4)
    adapter = OnlineAdapter(pt, backend, params(**{"adaptation.deploy_on_signals": True}), start=False)
    rng = np.random.default_rng(2)
    for track in range(10):
        adapter.submit(*person_pair(rng, track=track % 3))
    current = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    before = probe(backend)
    adapter._steps_since_swap = 1
    assert not adapter.consider_swap(force=True)
    state = adapter.state()
    assert (state["held"], state["swaps"], state["rollbacks"], state["resets"]) == (1, 0, 0, 0)
    assert state["on_source"] and state["last_error"].startswith("held: not below the source")
    assert "augment_gap" in state["last_error"]
    assert np.array_equal(probe(backend), before)
    assert all(torch.equal(v, current[k]) for k, v in adapter.model.state_dict().items())  # training goes on from it
    scores = adapter.score(adapter._take(adapter._holdout, 32, pop=False))
    assert {"signal_augment_gap", "signal_bone_jitter", "signal_left_right"} <= set(scores)


def test_implausible_update_is_rolled_back(model_files):
    pt, onnx = model_files
    backend = OnnxRuntimeBackend(onnx, max_batch=4)
    adapter = OnlineAdapter(pt, backend, params(), start=False)
    rng = np.random.default_rng(1)
    for _ in range(10):
        adapter.submit(*person_pair(rng))
    good = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    before = probe(backend)
    with torch.no_grad():  # a corrupted update: votes thrown metres away
        last = adapter.model.vote_head[-1]
        last.bias.add_(torch.randn_like(last.bias) * 5.0)
    adapter._steps_since_swap = 1
    assert not adapter.consider_swap(force=True)
    state = adapter.state()
    assert (state["rollbacks"], state["resets"], state["swaps"]) == (1, 0, 0) and state["on_source"]
    assert np.array_equal(probe(backend), before)  # the backend never saw the bad weights
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, good[k])


def drift(adapter: OnlineAdapter, steps: int, size: float = 0.005) -> list[bool]:
    """Move the vote head's bias a little further along one direction before each guarded swap: every
    step is small next to the last one, the sum is not."""
    direction = torch.randn(adapter.model.vote_head[-1].bias.shape, generator=torch.Generator().manual_seed(3))
    swapped = []
    for _ in range(steps):
        with torch.no_grad():
            adapter.model.vote_head[-1].bias.add_(direction * size)
        adapter._steps_since_swap = 1
        swapped.append(adapter.consider_swap(force=True))
    return swapped


def test_slow_drift_is_caught_against_the_source_and_reset(model_files):
    pt, onnx = model_files
    rng = np.random.default_rng(1)
    pairs = [person_pair(rng) for _ in range(20)]
    # guards against the last good weights only (the source check switched off): every step passes
    blind = OnlineAdapter(pt, OnnxRuntimeBackend(onnx, max_batch=4),
                          params(**{"adaptation.source_tolerance": 10.0}), start=False)
    for item in pairs:
        blind.submit(*item)
    assert all(drift(blind, 8))
    state = blind.state()
    assert state["swaps"] == 8 and state["rollbacks"] == state["resets"] == 0
    assert state["signal"] > 1.05 * state["source_signal"]  # yet it drifted more than 5 % above the source
    # the shipped guard sees it: a reset to the source, in the model, the optimizer and the backend
    backend = OnnxRuntimeBackend(onnx, max_batch=4)
    source_outputs = probe(backend)
    adapter = OnlineAdapter(pt, backend, params(), start=False)
    for item in pairs:
        adapter.submit(*item)
    swapped = drift(adapter, 8)
    state = adapter.state()
    assert swapped[0] and not all(swapped)
    assert state["resets"] >= 1 and state["rollbacks"] == 0 and "reset to the source" in state["last_error"]
    first_reset = swapped.index(False)
    assert all(swapped[:first_reset]) and first_reset >= 2  # some small steps were accepted first
    # right after a reset the backend runs the source weights again
    adapter2 = OnlineAdapter(pt, backend, params(), start=False)
    for item in pairs:
        adapter2.submit(*item)
    swapped = drift(adapter2, first_reset + 1)
    assert not swapped[-1] and adapter2.state()["on_source"]
    assert np.allclose(probe(backend), source_outputs, atol=1e-5)
    for key, value in adapter2.model.state_dict().items():
        assert torch.equal(value, adapter2._source_state[key])


def test_submit_never_blocks_and_drops_oldest(model_files):
    pt, onnx = model_files
    backend = OnnxRuntimeBackend(onnx, max_batch=4)
    adapter = OnlineAdapter(pt, backend, params(**{"adaptation.buffer_size": 8}), start=True)
    try:
        rng = np.random.default_rng(2)
        items = [person_pair(rng, track=i % 3) for i in range(60)]
        worst = 0.0
        for item in items:
            start = time.perf_counter()
            adapter.submit(*item)
            worst = max(worst, time.perf_counter() - start)
        assert worst < 0.05  # appends only, even while the worker is stepping
        state = adapter.state()
        assert state["buffer"] <= 8
        assert state["dropped"] > 0
        # bad input is counted, not raised
        assert not adapter.submit(1, np.zeros((3, 3)), np.zeros((20, 3)), np.zeros((20, 3)))
        assert not adapter.submit(1, np.zeros((20, 3)), np.zeros((20, 3)), np.zeros((19, 3)))
        assert adapter.state()["rejected"] == 2
        deadline = time.monotonic() + 30
        while adapter.state()["steps"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert adapter.state()["steps"] >= 1 and adapter.state()["running"]
    finally:
        adapter.close()
    assert not adapter.state()["running"]


def test_adapted_weights_survive_a_restart_of_the_same_model_only(model_files, tmp_path):
    """A new adapter (a node restart) continues from the saved adapted weights of the same model; with
    adaptation.resume false, or saved from another model, it starts from the model."""
    pt, onnx = model_files
    saved = {"adaptation.checkpoint_dir": str(tmp_path)}
    first = OnlineAdapter(pt, OnnxRuntimeBackend(onnx, max_batch=4), params(**saved), start=False)
    source_out = probe(OnnxRuntimeBackend(onnx, max_batch=4))
    rng = np.random.default_rng(0)
    for _ in range(15):
        first.submit(*person_pair(rng))
    assert first.step()
    first._acceptable = lambda candidate, good, *_: (bool(candidate["finite"]), "ok")
    assert first.consider_swap(force=True) and (tmp_path / "adapted_last.pt").is_file()
    adapted_out = probe(first.backend)
    assert np.abs(adapted_out - source_out).max() > 1e-5

    backend = OnnxRuntimeBackend(onnx, max_batch=4)
    again = OnlineAdapter(pt, backend, params(**saved), start=False)
    assert again.state()["resumed"] and not again.state()["on_source"]
    np.testing.assert_allclose(probe(backend), adapted_out, atol=1e-5)

    fresh = OnnxRuntimeBackend(onnx, max_batch=4)
    refused = OnlineAdapter(pt, fresh, params(**saved, **{"adaptation.resume": False}), start=False)
    assert not refused.state()["resumed"]
    np.testing.assert_allclose(probe(fresh), source_out, atol=1e-6)

    torch.manual_seed(1)  # another model: its saved weights do not apply
    other = tmp_path / "other.pt"
    save_checkpoint(other, build_model({"dim": 16, "depth": 1, "heads": 2, "mlp_ratio": 2}), {"num_points": NUM_POINTS})
    export_checkpoint(other, tmp_path / "other.onnx")
    other_backend = OnnxRuntimeBackend(tmp_path / "other.onnx", max_batch=4)
    before = probe(other_backend)
    stranger = OnlineAdapter(other, other_backend, params(**saved), start=False)
    assert not stranger.state()["resumed"]
    np.testing.assert_allclose(probe(other_backend), before, atol=1e-6)


def test_discard_returns_to_the_source_model_and_forgets_the_saved_weights(model_files, tmp_path):
    """discard(): the backend, the model and adapted_last.pt go back to the source, also while the
    adaptation thread runs; a restart afterwards starts from the source."""
    pt, onnx = model_files
    saved = {"adaptation.checkpoint_dir": str(tmp_path)}
    source_out = probe(OnnxRuntimeBackend(onnx, max_batch=4))
    backend = OnnxRuntimeBackend(onnx, max_batch=4)
    adapter = OnlineAdapter(pt, backend, params(**saved), start=False)
    rng = np.random.default_rng(0)
    for _ in range(15):
        adapter.submit(*person_pair(rng))
    assert adapter.step()
    adapter._acceptable = lambda candidate, good, *_: (bool(candidate["finite"]), "ok")
    assert adapter.consider_swap(force=True) and np.abs(probe(backend) - source_out).max() > 1e-5
    done, message = adapter.discard()
    assert done and "source" in message
    np.testing.assert_allclose(probe(backend), source_out, atol=1e-6)
    state = adapter.state()
    assert state["discards"] == 1 and state["on_source"] and state["buffer"] == 0 and state["held_back"] == 0
    assert not (tmp_path / "adapted_last.pt").exists()
    assert not OnlineAdapter(pt, OnnxRuntimeBackend(onnx, max_batch=4), params(**saved), start=False).state()["resumed"]

    running = OnlineAdapter(pt, OnnxRuntimeBackend(onnx, max_batch=4), params(**saved), start=True)
    try:
        for _ in range(30):
            running.submit(*person_pair(rng))
        done, _ = running.discard(timeout=20.0)
        assert done and running.state()["discards"] == 1 and running.state()["on_source"]
    finally:
        running.close()


def test_paused_queues_nothing_and_takes_no_steps_until_resumed(model_files):
    """adaptation.paused at run time: submit queues nothing and the thread takes no step, with a full buffer;
    back to false, the thread goes on from the same weights."""
    pt, onnx = model_files
    p = params(**{"adaptation.min_interval_s": 3600.0})
    running = OnlineAdapter(pt, OnnxRuntimeBackend(onnx, max_batch=4), p, start=True)
    rng = np.random.default_rng(3)
    try:
        for _ in range(10):
            assert running.submit(*person_pair(rng))
        deadline = time.monotonic() + 30.0
        while running.state()["steps"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running.state()["steps"] > 0
        running.params = p | {"adaptation.paused": True}  # as the node's parameter callback sets it
        time.sleep(1.0)  # the current step finishes
        before = running.state()
        assert before["paused"] and not running.submit(*person_pair(rng))
        running._buffer.extend([person_pair(rng)] * 8)  # a full batch waiting: still no step while paused
        running._wake.set()
        time.sleep(1.5)
        after = running.state()
        assert after["steps"] == before["steps"] and after["buffer"] == before["buffer"] + 8
        running.params = p
        running._wake.set()
        deadline = time.monotonic() + 30.0
        while running.state()["steps"] == before["steps"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running.state()["steps"] > before["steps"] and not running.state()["paused"]
    finally:
        running.close()


def test_the_adapter_thread_waits_while_a_frame_is_in_progress(model_files):
    """PerceptionGate: between frame_started and frame_finished the adapter's thread takes no step (every torch
    operation waits); after frame_finished it goes on."""
    pt, onnx = model_files
    running = OnlineAdapter(pt, OnnxRuntimeBackend(onnx, max_batch=4), params(), start=True)
    rng = np.random.default_rng(5)
    try:
        running.gate.frame_started()
        for _ in range(10):
            assert running.submit(*person_pair(rng))
        time.sleep(1.5)
        assert running.state()["steps"] == 0 and running.state()["yields"] > 0
        running.gate.frame_finished()
        deadline = time.monotonic() + 30.0
        while running.state()["steps"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running.state()["steps"] > 0
    finally:
        running.gate.frame_finished()
        running.close()
    beside = OnlineAdapter(pt, OnnxRuntimeBackend(onnx, max_batch=4),
                           params(**{"adaptation.yield_to_perception": False}), start=True)
    try:  # without yielding, it steps during the frame
        beside.gate.frame_started()
        for _ in range(10):
            assert beside.submit(*person_pair(rng))
        deadline = time.monotonic() + 30.0
        while beside.state()["steps"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert beside.state()["steps"] > 0 and beside.state()["yields"] == 0
    finally:
        beside.close()


def test_a_recipe_adds_its_labelled_anchor_to_every_step(model_files, tmp_path):
    """adaptation.recipe: the Stage II config's loss weights and a labelled Stage I batch in every step."""
    import yaml
    from tiny_stage1_data import write_split

    pt, onnx = model_files
    write_split(tmp_path / "s1" / "train", 40, 0)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"source": {"data": str(tmp_path / "s1"), "weight": 1.0, "batch_size": 4,
                                                 "config": ""}, "loss": {"flow": 6.0}}))
    rng = np.random.default_rng(0)
    items = [person_pair(rng) for _ in range(5)]
    losses_seen = {}
    for name, extra in (("plain", {}), ("anchored", {"adaptation.recipe": str(recipe), "adaptation.anchor_data": ""})):
        torch.manual_seed(0)
        adapter = OnlineAdapter(pt, OnnxRuntimeBackend(onnx, max_batch=4), params(**extra), start=False)
        for item in items:
            adapter.submit(*item)
        assert adapter.step()
        losses_seen[name] = adapter.state()["last_loss"]
    assert losses_seen["anchored"] > losses_seen["plain"] + 1e-3  # its weights and the Stage I loss are in the step
    with pytest.raises(FileNotFoundError, match=r"adaptation\.recipe"):
        OnlineAdapter(pt, OnnxRuntimeBackend(onnx, max_batch=4),
                      params(**{"adaptation.recipe": str(tmp_path / "missing.yaml")}), start=False)


def test_the_cached_anchor_is_generated_once_before_the_first_step(model_files, tmp_path, monkeypatch):
    """source.data 'cache': the first step has the labelled anchor generated into the user's cache; later adapters
    reuse it; a recipe whose anchor cannot be made takes no steps and says why; a missing anchor folder is an
    error at start."""
    import yaml

    monkeypatch.setenv("KP3D_ROS_CACHE_DIR", str(tmp_path / "cache"))
    pt, onnx = model_files
    rng = np.random.default_rng(0)
    items = [person_pair(rng) for _ in range(5)]

    def recipe(name: str, source: dict) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"source": {"weight": 1.0, "batch_size": 4, "config": ""} | source}))
        return str(path)

    cached = recipe("cached", {"data": "cache", "cache_samples": 8, "cache_seed": 3})
    done = tmp_path / "cache" / "anchor" / "stage1-seed3-n8" / "train" / "DONE"
    written = []
    for _ in range(2):
        adapter = OnlineAdapter(pt, OnnxRuntimeBackend(onnx, max_batch=4), params(**{"adaptation.recipe": cached}),
                                start=False)
        assert adapter.state()["anchor"] == "waiting"  # nothing generated at construction
        for item in items:
            adapter.submit(*item)
        assert adapter.step() and adapter.state()["anchor"] == "ready" and done.is_file()
        written.append(done.stat().st_mtime_ns)
    assert written[0] == written[1]  # the second adapter reused it

    broken = recipe("broken", {"data": "cache", "cache_split": "no-such-split"})
    adapter = OnlineAdapter(pt, OnnxRuntimeBackend(onnx, max_batch=4), params(**{"adaptation.recipe": broken}),
                            start=False)
    for item in items:
        adapter.submit(*item)
    assert not adapter.step()
    state = adapter.state()
    assert state["anchor"].startswith("failed") and "no-such-split" in state["last_error"] and state["steps"] == 0

    closing = OnlineAdapter(pt, OnnxRuntimeBackend(onnx, max_batch=4), params(**{"adaptation.recipe": broken}),
                            start=False)
    for item in items:
        closing.submit(*item)
    closing.close()  # a failure while the node shuts down (the generating child stopped with it) is no error
    assert not closing.step() and closing.state()["anchor"] == "waiting" and closing.state()["errors"] == 0

    missing = recipe("missing", {"data": str(tmp_path / "no_anchor")})
    for anchor_data in ("", str(tmp_path / "nowhere")):  # the recipe's own source.data, or the parameter's
        with pytest.raises(FileNotFoundError, match="no labelled anchor"):
            OnlineAdapter(pt, OnnxRuntimeBackend(onnx, max_batch=4),
                          params(**{"adaptation.recipe": missing, "adaptation.anchor_data": anchor_data}), start=False)

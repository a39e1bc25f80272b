"""Online adaptation: fine-tune the network in the background with the Stage II losses, swap weights safely.

The perception pipeline calls ``submit(track_id, prev_points, points, flow)`` after each frame (flow:
each current point's motion since the previous frame). submit only appends to bounded queues (the
oldest sample is dropped and counted when full); a background thread (nice +10, one torch thread)
takes gradient steps on batches of pairs, and at most every ``adaptation.min_interval_s`` seconds
considers swapping the new weights into the inference backend (``backend.update_weights``: ONNX Runtime
builds a new session, TensorRT refits), which never blocks perception.

Guards: one submitted sample in HOLDOUT_EVERY is held back; before a swap the candidate weights are
scored on the held-back pairs (Stage II loss and skeleton plausibility: bones within human ranges,
left/right limb symmetry) against the last good weights and against the frozen source model (the
weights the adapter started from). A candidate worse than either (held-back loss more than 15 % above
the last good weights' or more than ``adaptation.source_tolerance`` above the source's, or less
plausible) is refused. While the backend runs adapted weights, a candidate refused against the source
only, or adapted weights in the backend that are themselves no longer within the tolerance of the
source, send the model, the optimizer and the backend back to the source weights (a reset): a slow
drift that passes every step-to-step check is caught against the fixed reference. Any other refusal
rolls the model back to the last good weights (a rollback). A candidate that passes these guards goes
into the backend only when it is below both the source model and the weights in use on every label-free
signal of Stage II's selection (``train.signals``: augmentation gap, bone jitter, left/right mismatch on the
held-back pairs; ``adaptation.deploy_on_signals``), its augmentation gap clearly below the source's (by
``adaptation.deploy_standard_errors`` standard errors of the paired per-crop difference); otherwise it is
held: training goes on from it and the backend keeps its weights. The held-back loss alone falls for any
adapted weights (it is what they minimise), so it cannot tell a better model from a worse one. Accepted
weights are saved to ``adaptation.checkpoint_dir`` when it is set.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch.overrides import TorchFunctionMode

from kp3d_ros import losses
from kp3d_ros.model.checkpoint import load_model, save_checkpoint
from kp3d_ros.resources import find_share_file
from kp3d_ros.train import anchor, selection, stage2
from kp3d_ros.train import signals as label_free
from kp3d_ros.train.pairs import PairSample, collate_pairs

HOLDOUT_EVERY = 5  # every 5th submitted sample is held back for the guards
HOLDOUT_SIZE = 32
MIN_HOLDOUT = 2
LOSS_TOLERANCE = 1.15  # candidate held-back loss may be at most 15 % above the last good one
BONES_TOLERANCE = 0.1  # share of bones in range may drop by at most this much
MISMATCH_TOLERANCE = 0.1  # left/right mismatch may grow by at most this much
MIN_POINTS = 10
MAX_YIELD_S = 0.5  # the adapter waits at most this long for a frame to finish before going on


class PerceptionGate:
    """Lets the adapter's torch work run between frames. The node marks each frame busy, from a cloud's
    arrival until its outputs are published. Meanwhile the adapter thread waits before every torch operation
    it calls (a TorchFunctionMode, entered by the thread: modes are per thread) and before the backward through
    each layer's output (tensor hooks). Separate processes or a lower CPU priority do not do this: a training
    step beside the node, even at SCHED_IDLE in a process of its own, slowed frames by 12 % on a 2-core machine
    (benchmarks/results/stage2.md)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled  # false: frames are still marked, nothing waits
        self._idle = threading.Event()
        self._idle.set()
        self.waits = 0

    def frame_started(self) -> None:
        self._idle.clear()

    def frame_finished(self) -> None:
        self._idle.set()

    def wait(self) -> None:
        """Block the calling (adapter) thread while a frame is in progress, at most MAX_YIELD_S."""
        if self.enabled and not self._idle.is_set():
            self.waits += 1
            self._idle.wait(MAX_YIELD_S)

    def attach(self, model: torch.nn.Module) -> None:
        """Wait before the backward through every layer's output that needs a gradient."""
        def after_forward(module: torch.nn.Module, args: Any, output: Any) -> None:
            for tensor in output if isinstance(output, tuple) else (output,):
                if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                    tensor.register_hook(lambda grad: self.wait())

        for module in model.modules():
            if module is not model:
                module.register_forward_hook(after_forward)

    def operations(self) -> _WaitBeforeEachOperation:
        """A context in which every torch operation of this thread first waits for the frame in progress."""
        return _WaitBeforeEachOperation(self)


class _WaitBeforeEachOperation(TorchFunctionMode):
    def __init__(self, gate: PerceptionGate) -> None:
        super().__init__()
        self.gate = gate

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.gate.wait()
        return func(*args, **(kwargs or {}))


# What opening the labelled anchor imports: open3d alone takes about 0.6 s, all of it holding Python's lock.
ANCHOR_MODULES = ("kp3d_ros.synth.dataset", "kp3d_ros.synth.augment", "kp3d_ros.synth.cli")


def resolve_recipe(recipe: str) -> Path:
    """adaptation.recipe as a file: the path itself, or for config/NAME the package's installed config/NAME."""
    path = Path(recipe)
    if path.is_file():
        return path
    if path.parent == Path("config"):
        with contextlib.suppress(FileNotFoundError):
            return find_share_file("config", path.name)
    raise FileNotFoundError(f"adaptation.recipe {recipe} does not exist")


def _forward_from_backward(src: np.ndarray, dst: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Forward flow of src: minus the backward flow of the dst point that lands nearest to it."""
    _, idx = cKDTree(dst + backward).query(src, k=1)
    return -backward[idx]


class OnlineAdapter:
    """Background Stage II fine-tuning for the node (see the module docstring)."""

    def __init__(self, checkpoint_path: str | Path, backend: Any, params: dict, logger: Any = None,
                 start: bool = True, seg_target: str = "confident", seed: int = 0) -> None:
        self.log = logger or logging.getLogger(__name__)
        self.backend = backend
        self.params = params
        self.model, self.meta = load_model(checkpoint_path)
        self.num_points = int(getattr(backend, "num_points", self.meta["num_points"]))
        frozen = None
        if seg_target == "confident":
            frozen = copy.deepcopy(self.model).eval()
            for p in frozen.parameters():
                p.requires_grad_(False)
        weights, self._anchor, self._anchor_weight = losses.LossWeights(), None, 0.0
        self._recipe: dict | None = None
        self._anchor_state = "none"  # none | waiting | ready | failed: ...
        recipe = str(params.get("adaptation.recipe", "") or "")
        if recipe:  # the offline recipe's loss weights and labelled anchor (a Stage I batch in every step)
            self._recipe = stage2.load_config(resolve_recipe(recipe)) | {"num_points": self.num_points}
            if params.get("adaptation.anchor_data"):
                self._recipe["source"]["data"] = str(params["adaptation.anchor_data"])
            weights = losses.LossWeights.from_dict(self._recipe["loss"])
            self._anchor_weight = float(self._recipe["source"]["weight"])
            self._anchor_state = "waiting"  # opened (generated when needed) before the first step
            for module in ANCHOR_MODULES:  # imported now: in the adaptation thread they would hold the interpreter
                importlib.import_module(module)
            source = self._recipe["source"]
            on_disk = source["data"] != anchor.CACHE and self._anchor_weight > 0
            if on_disk and not (Path(source["data"]) / "train").is_dir():
                raise FileNotFoundError(f"adaptation.recipe {recipe}: no labelled anchor at {source['data']}/train "
                                        f"(source.data '{anchor.CACHE}' generates one into the user's cache)")
        self.objective = stage2.Stage2Objective(self.model, frozen, weights, seg_target)
        self.gate = PerceptionGate(bool(params.get("adaptation.yield_to_perception", True)))
        if self.gate.enabled:
            for net in (self.model, frozen):
                if net is not None:
                    self.gate.attach(net)
        self.optimizer = self._new_optimizer()
        self._source_state = copy.deepcopy(self.model.state_dict())  # frozen: the reference of every guard
        self._good_state = self._source_state
        self._source_sha = hashlib.sha256(Path(checkpoint_path).read_bytes()).hexdigest()
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._buffer: deque = deque(maxlen=int(params["adaptation.buffer_size"]))
        self._holdout: deque = deque(maxlen=HOLDOUT_SIZE)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._discard_requested = threading.Event()
        self._discarded = threading.Event()
        self._submitted = 0
        self._stats = {"steps": 0, "swaps": 0, "held": 0, "rollbacks": 0, "resets": 0, "dropped": 0, "rejected": 0,
                       "errors": 0, "last_loss": float("nan"), "last_swap_s": 0.0, "last_error": "",
                       "signal": float("nan"), "source_signal": float("nan"), "on_source": True, "resumed": False,
                       "discards": 0}
        self._last_swap = time.monotonic()
        self._steps_since_swap = 0
        self._thread: threading.Thread | None = None
        prepare = getattr(backend, "prepare_weight_updates", None)
        if prepare is not None:  # now, before the first frame: a weight swap later costs only a new session
            prepare()
        self._resume_saved()
        if start:
            self._thread = threading.Thread(target=self._run, name="kp3d-adaptation", daemon=True)
            self._thread.start()

    @classmethod
    def from_params(cls, params: dict, pipeline: Any, logger: Any = None) -> OnlineAdapter:
        """The adapter for a pipeline: the torch checkpoint next to network.model_path (or the shipped
        model), the pipeline's backend; raises when the backend cannot swap weights or no checkpoint exists."""
        from kp3d_ros.backends.factory import default_model_path

        backend = getattr(pipeline, "backend", None)
        if backend is None:
            raise RuntimeError("online adaptation needs an inference backend")
        model_path = Path(params.get("network.model_path") or default_model_path())
        checkpoint = model_path if model_path.suffix == ".pt" else model_path.with_suffix(".pt")
        if not checkpoint.is_file():
            raise FileNotFoundError(f"online adaptation needs the torch checkpoint {checkpoint}")
        return cls(checkpoint, backend, params, logger)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=float(self.params["adaptation.learning_rate"]),
                                 weight_decay=0.0)

    # -- perception side (never blocks on learning) ---------------------------------------------
    def submit(self, track_id: int, prev_points: np.ndarray, points: np.ndarray, flow: np.ndarray) -> bool:
        """Queue one frame pair of a track; False when adaptation.paused, or (counted) when the input is unusable."""
        if self.paused:
            return False
        prev_points, points, flow = np.asarray(prev_points), np.asarray(points), np.asarray(flow)
        if (prev_points.ndim != 2 or points.ndim != 2 or flow.shape != points.shape or points.shape[-1] != 3
                or prev_points.shape[-1] != 3 or len(prev_points) < MIN_POINTS or len(points) < MIN_POINTS):
            with self._lock:
                self._stats["rejected"] += 1
            return False
        item = (int(track_id), prev_points, points, flow)
        with self._lock:
            self._submitted += 1
            target = self._holdout if self._submitted % HOLDOUT_EVERY == 0 else self._buffer
            if target is self._buffer and len(self._buffer) == self._buffer.maxlen:
                self._stats["dropped"] += 1
            target.append(item)
            ready = len(self._buffer) >= int(self.params["adaptation.batch_size"])
        if ready:
            self._wake.set()
        return True

    @property
    def paused(self) -> bool:
        """adaptation.paused: no samples are queued and no steps taken; the backend keeps its weights."""
        return bool(self.params.get("adaptation.paused", False))

    def state(self) -> dict:
        """Diagnostics: steps, last loss, swaps, held candidates (passed the guards but not better on every
        label-free signal), rollbacks, resets to the source, discards (on request), the signal (held-back loss
        of the last candidate) and the source model's, whether it is paused, whether the backend runs the
        source weights, buffer fill, dropped and rejected samples."""
        with self._lock:
            out = dict(self._stats)
            out["buffer"] = len(self._buffer)
            out["buffer_size"] = self._buffer.maxlen
            out["held_back"] = len(self._holdout)
        out["running"] = self._thread is not None and self._thread.is_alive()
        out["paused"] = self.paused
        out["yields"] = self.gate.waits
        out["anchor"] = self._anchor_state
        return out

    def accepted_state(self) -> dict:
        """A copy of the weights the backend runs: the source model's, or the last accepted candidate's."""
        return {k: v.detach().clone() for k, v in self._good_state.items()}

    def discard(self, timeout: float = 30.0) -> tuple[bool, str]:
        """Throw the adapted weights away: the model, a new optimizer, the backend and the saved
        adapted_last.pt go back to the source model, and the sample buffers are emptied. Runs in the
        adaptation thread (after its current step) when one runs; (done, message)."""
        if self._thread is None or not self._thread.is_alive():
            self._discard_now()
            return True, "adapted weights discarded: running the source model"
        self._discarded.clear()
        self._discard_requested.set()
        self._wake.set()
        if not self._discarded.wait(timeout):
            return False, f"the adaptation thread did not answer within {timeout:g} s"
        return True, "adapted weights discarded: running the source model"

    def _discard_now(self) -> None:
        self._discard_requested.clear()
        with self._lock:
            self._buffer.clear()
            self._holdout.clear()
        self.model.load_state_dict(self._source_state)
        self.optimizer = self._new_optimizer()
        self._steps_since_swap = 0
        if self._good_state is not self._source_state:
            self._push(self._source_state)
            self._good_state = self._source_state
        path = self._saved_path()
        if path is not None and path.is_file():
            path.unlink()
        with self._lock:
            self._stats["discards"] += 1
            self._stats["on_source"] = True
            self._stats["resumed"] = False
        self.log.info("adaptation: adapted weights discarded, running the source model")
        self._discarded.set()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker thread (the current step finishes first)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- learning side ----------------------------------------------------------------------------
    def _to_pair(self, item: tuple) -> PairSample | None:
        track, prev_points, points, flow = item
        backward = -np.asarray(flow, dtype=np.float32)
        try:
            if not (np.isfinite(prev_points).all() and np.isfinite(points).all() and np.isfinite(backward).all()):
                raise ValueError("non-finite input")
            forward = _forward_from_backward(prev_points, points, backward)
            return PairSample(prev_points, points, forward, backward, track)
        except ValueError:
            with self._lock:
                self._stats["rejected"] += 1
            return None

    def _take(self, source: deque, count: int, pop: bool) -> list[PairSample]:
        with self._lock:
            items = [source.popleft() for _ in range(min(count, len(source)))] if pop else list(source)
        return [p for p in (self._to_pair(i) for i in items) if p is not None]

    def _prepare_anchor(self) -> bool:
        """The recipe's labelled anchor, opened (or, for source.data 'cache', generated once into the user's cache)
        before the first step; False when it failed: no steps are taken then, since the recipe needs it."""
        if self._anchor_state == "waiting":
            try:
                self._anchor = stage2.source_objective(self._recipe, self.model)
                self._anchor_state = "ready"
            except (OSError, ValueError) as error:
                if self._stop.is_set():  # the node is shutting down (its generating child was stopped with it)
                    self.log.info(f"adaptation: stopped while preparing the labelled anchor ({error})")
                    return False
                self._anchor_state = f"failed: {type(error).__name__}: {error}"
                with self._lock:
                    self._stats["errors"] += 1
                    self._stats["last_error"] = f"anchor: {error}"
                self.log.error(f"adaptation: cannot open the labelled anchor ({error}); adaptation takes no steps")
        return not self._anchor_state.startswith("failed")

    def step(self) -> bool:
        """One gradient step on a batch from the buffer; False when the buffer is short of a batch."""
        batch_size = int(self.params["adaptation.batch_size"])
        with self._lock:
            if len(self._buffer) < batch_size:
                return False
        if not self._prepare_anchor():
            return False
        self.gate.wait()
        pairs = self._take(self._buffer, batch_size, pop=True)
        if not pairs:
            return False
        prepared = collate_pairs(pairs, self.num_points, self._rng)
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.params["adaptation.learning_rate"])
        self.optimizer.zero_grad(set_to_none=True)
        total, _ = self.objective(prepared.batch)
        if self._anchor is not None:
            total = total + self._anchor_weight * self._anchor()
        if not torch.isfinite(total):
            with self._lock:
                self._stats["errors"] += 1
                self._stats["last_error"] = "non-finite loss; step skipped"
            return False
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.model.eval()
        self._steps_since_swap += 1
        with self._lock:
            self._stats["steps"] += 1
            self._stats["last_loss"] = float(total.detach())
        return True

    def score(self, pairs: list[PairSample]) -> dict[str, Any]:
        """Stage II loss and skeleton plausibility of the current weights on held-back pairs; with
        adaptation.deploy_on_signals also the label-free signals (``signal_*``) and each crop's augmentation
        gap (``gaps``, for the paired comparison with the source)."""
        prepared = collate_pairs(pairs, self.num_points, np.random.default_rng(0))
        self.model.eval()
        with torch.no_grad():
            total, _ = self.objective(prepared.batch)
            keypoints = self.model(torch.cat([prepared.batch.points_t, prepared.batch.points_t1]))[0]
        out = {"loss": float(total)}
        out.update(losses.skeleton_plausibility(keypoints))
        out["finite"] = float(torch.isfinite(keypoints).all())
        if self.params.get("adaptation.deploy_on_signals", True) and out["finite"]:
            geometric, _, gaps = label_free.geometric_signals(self.model, [p.src for p in pairs],
                                                              np.array([p.track for p in pairs]), self.num_points)
            out.update({f"signal_{k}": v for k, v in geometric.items()})
            out["gaps"] = gaps
        return out

    @staticmethod
    def _signals(scores: dict[str, Any]) -> dict[str, float]:
        return {k: v for k, v in scores.items() if k.startswith("signal_")}

    def _acceptable(self, candidate: dict[str, Any], good: dict[str, Any],
                    loss_tolerance: float = LOSS_TOLERANCE) -> tuple[bool, str]:
        """Whether `candidate`'s scores are no worse than the reference `good` by more than the tolerances."""
        if not candidate["finite"] or not np.isfinite(candidate["loss"]):
            return False, "non-finite outputs"
        if candidate["bones_in_range"] < good["bones_in_range"] - BONES_TOLERANCE:
            return False, f"bones in range {candidate['bones_in_range']:.2f} < {good['bones_in_range']:.2f}"
        if candidate["left_right_mismatch"] > good["left_right_mismatch"] + MISMATCH_TOLERANCE:
            return False, f"left/right mismatch {candidate['left_right_mismatch']:.2f}"
        if candidate["loss"] > loss_tolerance * good["loss"] + 1e-6:
            return False, f"held-back loss {candidate['loss']:.4g} > {good['loss']:.4g}"
        return True, "ok"

    def _scored(self, state: dict, held: list[PairSample]) -> dict[str, Any]:
        self.model.load_state_dict(state)
        return self.score(held)

    def consider_swap(self, force: bool = False) -> bool:
        """Guard the current weights on held-back pairs; swap them into the backend, roll back, or reset.

        Returns True when the candidate weights went into the backend (a reset puts the source weights
        there and returns False). Waits (returns False) while the rate limit or too few held-back pairs
        say so, unless force (the rate limit only).
        """
        interval = float(self.params["adaptation.min_interval_s"])
        if not force and (self._steps_since_swap == 0 or time.monotonic() - self._last_swap < interval):
            return False
        held = self._take(self._holdout, HOLDOUT_SIZE, pop=False)
        if len(held) < MIN_HOLDOUT:
            return False
        current_state = copy.deepcopy(self.model.state_dict())
        on_source = self._good_state is self._source_state
        candidate = self.score(held)
        source = self._scored(self._source_state, held)
        good = source if on_source else self._scored(self._good_state, held)
        self._steps_since_swap = 0
        self._last_swap = time.monotonic()
        with self._lock:
            self._stats["signal"], self._stats["source_signal"] = candidate["loss"], source["loss"]
        tolerance = 1.0 + float(self.params["adaptation.source_tolerance"])
        if not on_source and not self._acceptable(good, source, tolerance)[0]:
            self._reset_to_source("the weights in use drifted from the source")
            return False
        ok, why = self._acceptable(candidate, good)
        if ok:
            near_source, why = self._acceptable(candidate, source, tolerance)
            if not near_source and not on_source:
                self._reset_to_source(f"{why} (source)")
                return False
            ok = near_source
        if ok and self.params.get("adaptation.deploy_on_signals", True):
            # Deploy only what every label-free signal says is better than both the source and the weights in use;
            # otherwise hold: training goes on from the current weights, the backend keeps its own.
            worse = selection.not_below(self._signals(candidate), self._signals(source))
            margin = float(self.params.get("adaptation.deploy_standard_errors", 3.5))
            if "signal_augment_gap" not in worse and not label_free.clearly_lower(candidate["gaps"], source["gaps"],
                                                                                   margin):
                worse.append(f"signal_augment_gap (not clearly: paired per crop, {margin:g} standard errors)")
            worse += [k for k in selection.not_below(self._signals(candidate), self._signals(good)) if k not in worse]
            if worse:
                self.model.load_state_dict(current_state)  # scoring loaded the source's and good weights
                with self._lock:
                    self._stats["held"] += 1
                    self._stats["last_error"] = "held: not below the source and the weights in use on " + ", ".join(
                        k.removeprefix("signal_") for k in worse)
                return False
        if not ok:  # back to the last good weights (the source ones, when nothing was swapped in yet)
            self.model.load_state_dict(self._good_state)
            self.optimizer = self._new_optimizer()
            with self._lock:
                self._stats["rollbacks"] += 1
                self._stats["last_error"] = f"rollback: {why}"
            self.log.warning(f"adaptation: rolled back ({why})")
            return False
        self.model.load_state_dict(current_state)
        self._push(current_state)
        self._good_state = current_state
        with self._lock:
            self._stats["swaps"] += 1
            self._stats["on_source"] = False
        self._save_checkpoint()
        return True

    def _push(self, state: dict) -> None:
        """Put `state`'s weights into the inference backend, timed."""
        start = time.perf_counter()
        self.backend.update_weights({k: v.detach().clone() for k, v in state.items()})
        with self._lock:
            self._stats["last_swap_s"] = time.perf_counter() - start

    def _reset_to_source(self, why: str) -> None:
        """The model, a new optimizer and (when it runs other weights) the backend back to the source."""
        self.model.load_state_dict(self._source_state)
        self.optimizer = self._new_optimizer()
        if self._good_state is not self._source_state:
            self._push(self._source_state)
            self._good_state = self._source_state
            self._save_checkpoint()  # the saved adapted weights are the source ones again
        with self._lock:
            self._stats["resets"] += 1
            self._stats["on_source"] = True
            self._stats["last_error"] = f"reset to the source model: {why}"
        self.log.warning(f"adaptation: reset to the source model ({why})")

    def _saved_path(self) -> Path | None:
        directory = self.params.get("adaptation.checkpoint_dir", "")
        return Path(directory) / "adapted_last.pt" if directory else None

    def _save_checkpoint(self) -> None:
        path = self._saved_path()
        if path is None:
            return
        save_checkpoint(path, self.model, dict(self.meta) | {"stage": "online", "swaps": self._stats["swaps"],
                                                             "source_sha256": self._source_sha})

    def _resume_saved(self) -> None:
        """Continue from the weights a previous run saved (adaptation.resume), if they were adapted from this same
        model; they become the accepted weights and go into the backend. The guards still compare with the source."""
        path = self._saved_path()
        if path is None or not path.is_file():
            return
        if not self.params.get("adaptation.resume", True):
            self.log.info(f"adaptation: not resuming {path} (adaptation.resume is false); it will be overwritten")
            return
        try:
            saved, meta = load_model(path)
        except Exception as error:  # a broken file must not stop the node: start from the source
            self.log.warning(f"adaptation: cannot read {path} ({type(error).__name__}: {error}); "
                             "starting from the model")
            return
        if meta.get("source_sha256") != self._source_sha:
            self.log.warning(f"adaptation: {path} was adapted from another model; starting from this one")
            return
        self.model.load_state_dict(saved.state_dict())
        self._good_state = copy.deepcopy(self.model.state_dict())
        self._push(self._good_state)
        with self._lock:
            self._stats["on_source"] = False
            self._stats["resumed"] = True
        self.log.info(f"adaptation: resumed the adapted weights of {path} ({meta.get('swaps', '?')} swaps)")

    def _run(self) -> None:
        torch.set_num_threads(1)
        # lower this thread's priority (Linux: threads are tasks with their own nice value)
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        with self.gate.operations() if self.gate.enabled else contextlib.nullcontext():
            self._loop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            try:
                if self._discard_requested.is_set():
                    self._discard_now()
                while (not self._stop.is_set() and not self._discard_requested.is_set() and not self.paused
                       and self.step()):
                    self.consider_swap()
                if self._discard_requested.is_set():
                    self._discard_now()
                elif not self.paused:
                    self.consider_swap()
            except Exception as exc:  # keep perception alive whatever happens here; count and report
                with self._lock:
                    self._stats["errors"] += 1
                    self._stats["last_error"] = f"{type(exc).__name__}: {exc}"
                self.log.error(f"adaptation step failed: {exc}")
                self.model.load_state_dict(self._good_state)
                self.optimizer = self._new_optimizer()

"""The unsupervised GC-KPL losses (shared/method.md, Stage II) and skeleton-consistency terms, in torch.

Shapes: points (B, N, 3), keypoints (B, J, 3), part probabilities (B, N, C) with C = NUM_CLASSES rows
summing to 1, limbs L = NUM_LIMBS. Every loss is vectorised over B, N and L and differentiable with
respect to the keypoints and the probabilities. Units are metres (the network's crop frame is metric).
Optional `valid` masks (B, N) exclude padded or flow-less points.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from kp3d_ros import skeleton as sk

EPS = 1e-6
DEFAULT_BANDWIDTH = 0.1  # m, symmetry kernel h (see benchmarks/results/stage2.md)

_PARENT = torch.from_numpy(sk.LIMB_PARENT_WEIGHTS)  # (L, J)
_CHILD = torch.from_numpy(sk.LIMB_CHILD_WEIGHTS)
_LIMB_PART = torch.from_numpy(sk.LIMB_PART)  # (L,)
_J2P = [(sk.JOINT_INDEX[j], sk.PART_INDEX[p]) for j, p in sk.JOINT_PART_PAIRS]

BONE_NAMES = sk.BONE_NAMES  # bones for length consistency: the ten limbs plus shoulder and hip width
_BONE_A = torch.cat([_PARENT, torch.from_numpy(np.stack([sk.point_weights("left_shoulder"),
                                                          sk.point_weights("left_hip")]))])
_BONE_B = torch.cat([_CHILD, torch.from_numpy(np.stack([sk.point_weights("right_shoulder"),
                                                         sk.point_weights("right_hip")]))])
_ANKLES = [sk.JOINT_INDEX["left_ankle"], sk.JOINT_INDEX["right_ankle"]]
# Typical adult bone lengths (m) and a generous plausible range, used by the group-variance loss
# (as the average skeleton) and by the online adapter's plausibility guard.
REFERENCE_BONE_LENGTHS = torch.tensor(
    [0.22, 0.50, 0.29, 0.25, 0.29, 0.25, 0.42, 0.41, 0.42, 0.41, 0.34, 0.20])
BONE_RANGE = (0.5, 1.7)  # plausible length / reference
BONE_GROUPS: dict[str, tuple[str, ...]] = {
    "arms": ("left_upper_arm", "left_forearm", "right_upper_arm", "right_forearm"),
    "legs": ("left_thigh", "left_shin", "right_thigh", "right_shin"),
    "trunk": ("torso", "shoulders", "hips"),
}
# 90th percentile of the distance from a part's points to its true limb segment (m), per limb in
# sk.LIMB_NAMES order, measured on 600 Stage I validation samples (data/stage1/val, all presets): a body
# model prior, like the bone lengths. points_to_limb_loss(margin=s) ignores distances below s times these.
LIMB_RADIUS_P90 = torch.tensor([0.133, 0.174, 0.082, 0.060, 0.082, 0.060, 0.113, 0.080, 0.113, 0.080])
# Left/right bone pairs (indices into BONE_NAMES) for the symmetry part of plausibility.
MIRROR_BONES = [(BONE_NAMES.index(a), BONE_NAMES.index(a.replace("left", "right")))
                for a in BONE_NAMES if a.startswith("left")]


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return t.to(dtype=ref.dtype, device=ref.device)


def _mask(valid: torch.Tensor | None, ref: torch.Tensor) -> torch.Tensor:
    """(B, N) float weights: 1 for valid points."""
    if valid is None:
        return torch.ones(ref.shape[:2], dtype=ref.dtype, device=ref.device)
    return valid.to(ref.dtype)


# -- limb geometry --------------------------------------------------------------------------------
def limb_endpoints(keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Parent and child endpoints (B, L, 3) of every limb."""
    return _like(_PARENT, keypoints) @ keypoints, _like(_CHILD, keypoints) @ keypoints


def limb_coordinates(points: torch.Tensor, keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial z and radial r coordinates (B, L, N) of every point around every limb."""
    a, b = limb_endpoints(keypoints)
    axis = b - a
    u = axis / (axis.norm(dim=-1, keepdim=True) + EPS)  # (B, L, 3)
    rel = points[:, None, :, :] - a[:, :, None, :]  # (B, L, N, 3)
    z = (rel * u[:, :, None, :]).sum(-1)
    perp = rel - z[..., None] * u[:, :, None, :]
    r = torch.sqrt((perp * perp).sum(-1) + EPS * EPS)
    return z, r


def limb_weights(probs: torch.Tensor) -> torch.Tensor:
    """W (B, L, N): probability of each point belonging to each limb's part."""
    return probs[..., _LIMB_PART.to(probs.device)].transpose(1, 2)


def segment_distance(points: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """Distance (B, L, N) from every point to every limb segment."""
    a, b = limb_endpoints(keypoints)
    axis = b - a
    length2 = (axis * axis).sum(-1, keepdim=True) + EPS  # (B, L, 1)
    rel = points[:, None, :, :] - a[:, :, None, :]
    s = ((rel * axis[:, :, None, :]).sum(-1) / length2).clamp(0.0, 1.0)  # (B, L, N)
    diff = rel - s[..., None] * axis[:, :, None, :]
    return torch.sqrt((diff * diff).sum(-1) + EPS * EPS)


def _limb_mean(per_point: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """mean over B and L of 1/N sum_i W_il x_il, N counting valid points."""
    n = valid.sum(-1).clamp(min=1.0)[:, None]  # (B, 1)
    return ((weights * per_point * valid[:, None, :]).sum(-1) / n).mean()


# -- the GC-KPL losses ----------------------------------------------------------------------------
def flow_term(points: torch.Tensor, carried: torch.Tensor, keypoints_from: torch.Tensor,
              keypoints_to: torch.Tensor, probs_from: torch.Tensor,
              valid: torch.Tensor | None = None) -> torch.Tensor:
    """One direction of the flow loss: points carried by the flow keep their limb coordinates.

    points (B, N, 3) at the first frame, carried = points + flow (B, N, 3) in the same coordinate frame
    as keypoints_to; keypoints_from / keypoints_to are the predictions at the two frames.
    """
    v = _mask(valid, points)
    z0, r0 = limb_coordinates(points, keypoints_from)
    z1, r1 = limb_coordinates(carried, keypoints_to)
    per_point = (r1 - r0).abs() + (z1 - z0).abs()
    return _limb_mean(per_point, limb_weights(probs_from), v)


def flow_loss(points_t: torch.Tensor, carried_t: torch.Tensor, keypoints_t: torch.Tensor, probs_t: torch.Tensor,
              points_t1: torch.Tensor, carried_t1: torch.Tensor, keypoints_t1: torch.Tensor,
              probs_t1: torch.Tensor, valid_t: torch.Tensor | None = None,
              valid_t1: torch.Tensor | None = None) -> torch.Tensor:
    """L_flow = (L_ff + L_bf) / 2; carried_t = p^t + f^t, carried_t1 = p^{t+1} + b^{t+1}."""
    forward = flow_term(points_t, carried_t, keypoints_t, keypoints_t1, probs_t, valid_t)
    backward = flow_term(points_t1, carried_t1, keypoints_t1, keypoints_t, probs_t1, valid_t1)
    return 0.5 * (forward + backward)


def points_to_limb_loss(points: torch.Tensor, keypoints: torch.Tensor, probs: torch.Tensor,
                        valid: torch.Tensor | None = None, margin: float = 0.0) -> torch.Tensor:
    """L_p2l: probability-weighted distance of each part's points to its limb segment.

    margin > 0 counts only the distance beyond margin x LIMB_RADIUS_P90 (a dead zone): a LiDAR sees one
    side of a limb, so the plain loss (margin 0, the paper's) pulls the limb onto the visible surface.
    """
    distance = segment_distance(points, keypoints)
    if margin:
        distance = torch.relu(distance - margin * _like(LIMB_RADIUS_P90, distance)[None, :, None])
    return _limb_mean(distance, limb_weights(probs), _mask(valid, points))


def symmetry_loss(points: torch.Tensor, keypoints: torch.Tensor, probs: torch.Tensor,
                  bandwidth: float = DEFAULT_BANDWIDTH, valid: torch.Tensor | None = None,
                  max_points: int | None = 64, limbs: torch.Tensor | None = None) -> torch.Tensor:
    """L_sym: each point's radius against the kernel-weighted mean radius of the other points of its limb.

    For speed each limb only looks at its `max_points` points of highest W (None: all N). The others
    carry little weight in both the sum and the mean radius, and the 1/N normalisation is unchanged.
    limbs: (L,) 0/1 mask of the limbs that take part (None: all); the mean is over those.
    """
    v = _mask(valid, points)
    z, r = limb_coordinates(points, keypoints)  # (B, L, N)
    W = limb_weights(probs) * v[:, None, :]
    B, L, N = W.shape
    n = v.sum(-1).clamp(min=1.0)[:, None]  # (B, 1)
    if max_points is not None and max_points < N:
        idx = W.detach().topk(max_points, dim=-1).indices  # (B, L, K)
        z, r, W = z.gather(-1, idx), r.gather(-1, idx), W.gather(-1, idx)
        rows = probs.gather(1, idx.reshape(B, -1, 1).expand(-1, -1, probs.shape[-1]))
        rows = rows.reshape(B, L, max_points, -1)  # (B, L, K, C)
        vk = v.gather(1, idx.reshape(B, -1)).reshape(B, L, max_points)
    else:
        rows = probs[:, None].expand(B, L, N, probs.shape[-1])
        vk = v[:, None].expand(B, L, N)
    K = z.shape[-1]
    kernel = torch.exp(-(((z[..., :, None] - z[..., None, :]) / bandwidth) ** 2))  # (B, L, K, K)
    similarity = rows @ rows.transpose(-1, -2)
    others = (1.0 - torch.eye(K, dtype=points.dtype, device=points.device)) * vk[..., None, :]
    k = kernel * similarity * others
    r_bar = (k * r[..., None, :]).sum(-1) / (k.sum(-1) + EPS)
    per_limb = (W * (r - r_bar) ** 2).sum(-1) / n  # (B, L)
    if limbs is None:
        return per_limb.mean()
    mask = _like(limbs, per_limb)
    return (per_limb * mask).sum(-1).mean() / mask.sum().clamp(min=1.0)


def joint_to_part_loss(points: torch.Tensor, keypoints: torch.Tensor, probs: torch.Tensor,
                       pairs: list[tuple[int, int]] | None = None, valid: torch.Tensor | None = None,
                       min_mass: float = 1.0, vertical_only: bool = False) -> torch.Tensor:
    """L_j2p: each paired joint against the probability-weighted centroid of its part's points.

    Pairs whose part has less than `min_mass` total probability (about one point) in a sample are
    left out: their centroid is undefined (the part is not seen). vertical_only compares heights (crop z)
    only: a LiDAR sees one side of the head, so the centroid lies sensor-side of the head centre, but at
    its height.
    """
    pairs = _J2P if pairs is None else pairs
    if not pairs:
        return keypoints.sum() * 0.0
    v = _mask(valid, points)
    joints = torch.tensor([j for j, _ in pairs], device=points.device)
    parts = torch.tensor([p for _, p in pairs], device=points.device)
    w = probs[..., parts] * v[..., None]  # (B, N, P)
    mass = w.sum(1)  # (B, P)
    centroid = (w.transpose(1, 2) @ points) / (mass[..., None] + EPS)  # (B, P, 3)
    seen = (mass.detach() >= min_mass).to(points.dtype)
    diff = keypoints[:, joints] - centroid
    dist = diff[..., 2].abs() if vertical_only else diff.norm(dim=-1)
    return (dist * seen).sum() / seen.sum().clamp(min=1.0)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against (pseudo-)labels (B, N), -1 = ignored; 0 when every label is ignored."""
    flat = labels.reshape(-1).long()
    if not (flat >= 0).any():
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat, ignore_index=-1)


# -- pseudo-labels for the segmentation loss ------------------------------------------------------
def confident_labels(probs: torch.Tensor, threshold: float = 0.8) -> torch.Tensor:
    """Argmax part (B, N) of (frozen Stage I) probabilities, -1 where the top probability < threshold."""
    top, label = probs.max(-1)
    return torch.where(top >= threshold, label, torch.full_like(label, -1))


def nearest_limb_labels(points: torch.Tensor, keypoints: torch.Tensor, max_distance: float = 0.2) -> torch.Tensor:
    """Part (B, N) of the nearest predicted limb segment, -1 for points farther than max_distance from all."""
    d = segment_distance(points, keypoints)  # (B, L, N)
    dmin, limb = d.min(1)
    label = _LIMB_PART.to(points.device)[limb]
    return torch.where(dmin <= max_distance, label, torch.full_like(label, -1))


# -- bone lengths ---------------------------------------------------------------------------------
def bone_lengths(keypoints: torch.Tensor) -> torch.Tensor:
    """Lengths (..., E) of the BONE_NAMES bones from keypoints (..., J, 3)."""
    a = _like(_BONE_A, keypoints) @ keypoints
    b = _like(_BONE_B, keypoints) @ keypoints
    return (b - a).norm(dim=-1)


def bone_consistency_loss(keypoints: torch.Tensor, track: torch.Tensor) -> torch.Tensor:
    """Each bone of a tracked person keeps its length: mean squared deviation from the track's mean length.

    keypoints (B, J, 3); track (B,) integer id of the person each sample shows (samples with a unique id
    contribute nothing).
    """
    lengths = bone_lengths(keypoints)  # (B, E)
    _, inverse, counts = torch.unique(track, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), lengths.shape[1], dtype=lengths.dtype, device=lengths.device)
    sums = sums.index_add(0, inverse, lengths)
    means = sums / counts[:, None].to(lengths.dtype)
    dev = (lengths - means[inverse]) ** 2
    repeated = (counts[inverse] > 1).to(lengths.dtype)[:, None]
    return (dev * repeated).sum() / (repeated.sum() * lengths.shape[1]).clamp(min=1.0)


def bone_group_variance_loss(keypoints: torch.Tensor,
                             reference: torch.Tensor | None = None) -> torch.Tensor:
    """Zhou et al. 2017: within each bone group, lengths relative to the average skeleton agree."""
    ref = _like(REFERENCE_BONE_LENGTHS if reference is None else reference, keypoints)
    ratio = bone_lengths(keypoints) / ref  # (B, E)
    terms = []
    for names in BONE_GROUPS.values():
        idx = [BONE_NAMES.index(n) for n in names]
        terms.append(ratio[:, idx].var(dim=1, unbiased=False))
    return torch.stack(terms, 1).mean()


def bone_prior_loss(keypoints: torch.Tensor, population: torch.Tensor) -> torch.Tensor:
    """The batch's mean length of each bone against a population's mean (E,): mean squared relative error.

    A prior on the crowd, not on the person: it corrects a systematic scale (bulky clothing reads as a
    bigger person) and leaves each person free to be taller or shorter than the mean.
    """
    ratio = bone_lengths(keypoints).mean(0) / _like(population, keypoints)
    return ((ratio - 1.0) ** 2).mean()


def lowest_ankle_height(keypoints: torch.Tensor, ground: torch.Tensor) -> torch.Tensor:
    """Height (B,) of each person's lower ankle above the ground height (B,) under it."""
    return keypoints[:, _ANKLES, 2].min(1).values - ground


def ground_prior_loss(keypoints: torch.Tensor, ground: torch.Tensor, height: float) -> torch.Tensor:
    """The batch's mean height of the lower ankle above the ground against a population's mean (m):
    squared error. Samples whose ground height is unknown (NaN) are left out. The gradient reaches each
    skeleton's mean joint only (placement_only): the loss lifts or lowers whole skeletons, not the feet.

    People stand on the ground: this fixes where the skeletons sit vertically, while each person may still
    lift a foot, crouch or jump.
    """
    known = torch.isfinite(ground)
    if not bool(known.any()):
        return keypoints.sum() * 0.0
    placed = placement_only(keypoints[known])
    gap = lowest_ankle_height(placed, ground[known].to(keypoints.dtype)).mean() - height
    return gap ** 2


def skeleton_plausibility(keypoints: torch.Tensor) -> dict[str, float]:
    """Share of bones within the human range and mean left/right length mismatch (relative)."""
    with torch.no_grad():
        lengths = bone_lengths(keypoints)
        ratio = lengths / _like(REFERENCE_BONE_LENGTHS, lengths)
        in_range = ((ratio >= BONE_RANGE[0]) & (ratio <= BONE_RANGE[1])).float().mean()
        left = lengths[:, [a for a, _ in MIRROR_BONES]]
        right = lengths[:, [b for _, b in MIRROR_BONES]]
        mismatch = ((left - right).abs() / (0.5 * (left + right) + EPS)).mean()
    return {"bones_in_range": float(in_range), "left_right_mismatch": float(mismatch)}


# -- the total ------------------------------------------------------------------------------------
@dataclass
class LossWeights:
    """Weights of the Stage II total: method.md's, except joint-to-part (method.md: 2.0), off because the
    head's LiDAR returns lie sensor-side of the head centre and the loss then prefers wrong joints
    (benchmarks/results/stage2.md); bone terms are off by default."""

    flow: float = 0.02
    p2l: float = 0.01
    sym: float = 0.5
    j2p: float = 0.0
    seg: float = 0.5
    bone: float = 0.0
    bone_group: float = 0.0
    bandwidth: float = DEFAULT_BANDWIDTH
    p2l_margin: float = 0.0  # dead zone of L_p2l in units of LIMB_RADIUS_P90 (0: the paper's loss)
    detach_part_weights: bool = False  # geometric losses train keypoints only (W_ia without gradient)
    sym_limbs: tuple[str, ...] = ()  # limbs (skeleton.LIMB_NAMES) that L_sym covers; empty: all
    sym_placement_only: bool = False  # L_sym moves the whole skeleton only (its gradient reaches the mean joint)
    sym_vertical: float = 1.0  # with sym_placement_only: scale of L_sym's vertical (crop z) pull
    j2p_vertical_only: bool = False  # L_j2p on heights only (see joint_to_part_loss)
    bone_prior: float = 0.0  # batch-mean bone lengths against the population's (bone_prior_loss)
    bone_prior_lengths: tuple[float, ...] = ()  # the population's mean length (m) of each BONE_NAMES bone
    bone_prior_size_only: bool = False  # L_bone_prior scales skeletons (size_only), it does not reshape them
    ground_prior: float = 0.0  # batch-mean height of the lower ankle above the ground (ground_prior_loss)
    ground_prior_height: float = 0.0  # the population's mean of that height (m)

    def __post_init__(self) -> None:
        self.sym_limbs = tuple(self.sym_limbs)
        unknown = set(self.sym_limbs) - set(sk.LIMB_NAMES)
        if unknown:
            raise ValueError(f"unknown limb(s) in sym_limbs: {', '.join(sorted(unknown))}; "
                             f"expected names from {sk.LIMB_NAMES}")
        self.bone_prior_lengths = tuple(float(v) for v in self.bone_prior_lengths)
        lengths = self.bone_prior_lengths
        if lengths and (len(lengths) != len(BONE_NAMES) or min(lengths) <= 0):
            raise ValueError(f"bone_prior_lengths needs {len(BONE_NAMES)} positive lengths ({BONE_NAMES}), "
                             f"got {lengths}")
        if self.bone_prior and not lengths:
            raise ValueError("bone_prior needs bone_prior_lengths (stage2 measures them on source.data)")
        if self.ground_prior and not self.ground_prior_height > 0:
            raise ValueError("ground_prior needs a positive ground_prior_height (stage2 measures it on source.data)")

    def sym_limb_mask(self) -> torch.Tensor | None:
        """(L,) mask of the limbs L_sym covers, or None for all."""
        if not self.sym_limbs:
            return None
        return torch.tensor([float(name in self.sym_limbs) for name in sk.LIMB_NAMES])

    @classmethod
    def from_dict(cls, values: dict | None) -> LossWeights:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown loss weight(s): {', '.join(sorted(unknown))}")
        return cls(**values)


@dataclass
class PairBatch:
    """One batch of frame pairs (t, t+1) of tracked people, all in metres.

    points_t, points_t1 (B, N, 3) in their own crop frames; carried_t = points_t + forward flow expressed
    in t+1's crop frame; carried_t1 = points_t1 + backward flow in t's crop frame.
    """

    points_t: torch.Tensor
    points_t1: torch.Tensor
    carried_t: torch.Tensor
    carried_t1: torch.Tensor
    valid_t: torch.Tensor | None = None
    valid_t1: torch.Tensor | None = None
    labels_t: torch.Tensor | None = None  # pseudo-labels (B, N), -1 ignored
    labels_t1: torch.Tensor | None = None
    track: torch.Tensor | None = None  # (B,) track ids for bone consistency
    ground_t: torch.Tensor | None = None  # (B,) ground height under each person in its crop frame, NaN: unknown
    ground_t1: torch.Tensor | None = None


def placement_only(keypoints: torch.Tensor, vertical: float = 1.0) -> torch.Tensor:
    """The same keypoints (B, J, 3) with a gradient that reaches only their mean: a loss on the result
    pulls every joint equally (towards a rigid move, not a new shape). `vertical` scales the pull along z."""
    centre = keypoints.mean(1, keepdim=True)
    scale = torch.tensor([1.0, 1.0, vertical], dtype=keypoints.dtype, device=keypoints.device)
    return keypoints.detach() + scale * (centre - centre.detach())


def size_only(keypoints: torch.Tensor) -> torch.Tensor:
    """The same keypoints (B, J, 3) with a gradient that reaches only each skeleton's size (the RMS distance
    of its joints from their mean, whose gradient is the direction of a uniform scaling): a loss on the
    result scales skeletons about their centres, not their shape."""
    centre = keypoints.mean(1, keepdim=True).detach()
    offsets = keypoints - centre
    size = offsets.pow(2).sum(-1).mean(1).sqrt()[:, None, None]
    return centre + offsets.detach() * (size / size.detach())


def stage2_loss(batch: PairBatch, keypoints_t: torch.Tensor, logits_t: torch.Tensor, keypoints_t1: torch.Tensor,
                logits_t1: torch.Tensor, weights: LossWeights | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted total and its components (floats, unweighted) for one batch of pairs."""
    w = weights or LossWeights()
    probs_t = logits_t.softmax(-1)
    probs_t1 = logits_t1.softmax(-1)
    if w.detach_part_weights:
        probs_t, probs_t1 = probs_t.detach(), probs_t1.detach()
    parts: dict[str, torch.Tensor] = {}
    zero = keypoints_t.sum() * 0.0
    if w.flow:
        parts["flow"] = flow_loss(batch.points_t, batch.carried_t, keypoints_t, probs_t, batch.points_t1,
                                  batch.carried_t1, keypoints_t1, probs_t1, batch.valid_t, batch.valid_t1)
    frames = ((batch.points_t, keypoints_t, probs_t, logits_t, batch.valid_t, batch.labels_t),
              (batch.points_t1, keypoints_t1, probs_t1, logits_t1, batch.valid_t1, batch.labels_t1))
    if w.p2l:
        parts["p2l"] = 0.5 * sum(points_to_limb_loss(p, k, pr, valid=v, margin=w.p2l_margin)
                                 for p, k, pr, _, v, _ in frames)
    if w.j2p:
        parts["j2p"] = 0.5 * sum(joint_to_part_loss(p, k, pr, valid=v, vertical_only=w.j2p_vertical_only)
                                 for p, k, pr, _, v, _ in frames)
    if w.sym:
        mask = w.sym_limb_mask()
        place = (lambda k: placement_only(k, w.sym_vertical)) if w.sym_placement_only else (lambda k: k)
        parts["sym"] = 0.5 * sum(symmetry_loss(p, place(k), pr, w.bandwidth, v, limbs=mask)
                                 for p, k, pr, _, v, _ in frames)
    if w.seg and batch.labels_t is not None:
        parts["seg"] = 0.5 * sum(segmentation_loss(lg, lb) for _, _, _, lg, _, lb in frames if lb is not None)
    if w.bone and batch.track is not None:
        both = torch.cat([keypoints_t, keypoints_t1])
        parts["bone"] = bone_consistency_loss(both, torch.cat([batch.track, batch.track]))
    if w.bone_prior:
        both = torch.cat([keypoints_t, keypoints_t1])
        parts["bone_prior"] = bone_prior_loss(size_only(both) if w.bone_prior_size_only else both,
                                              torch.tensor(w.bone_prior_lengths))
    if w.ground_prior and batch.ground_t is not None and batch.ground_t1 is not None:
        parts["ground_prior"] = ground_prior_loss(torch.cat([keypoints_t, keypoints_t1]),
                                                  torch.cat([batch.ground_t, batch.ground_t1]),
                                                  w.ground_prior_height)
    if w.bone_group:
        parts["bone_group"] = bone_group_variance_loss(torch.cat([keypoints_t, keypoints_t1]))
    total = zero
    for name, value in parts.items():
        total = total + getattr(w, name) * value
    return total, {name: float(value.detach()) for name, value in parts.items()}

"""`kp3d eval --model MODEL --data DATA_SPLIT` (or `--bag BAG`): keypoint and segmentation accuracy.

MODEL is a torch checkpoint (.pt, torch backend) or an ONNX file (.onnx, ONNX Runtime). On a bag the
whole perception core runs (detection, tracking, network) and people are matched to the ground truth
per frame (PEM). On a data set
split each sample is one person crop: it is resampled and centred like the node does (no
augmentation), keypoints are mapped back to the LiDAR frame and compared with the truth; every
original point gets a part (preprocess.point_parts) for the segmentation scores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from kp3d_ros import metrics
from kp3d_ros.backends.base import Backend
from kp3d_ros.model.preprocess import point_parts, prepare_batch, restore_keypoints
from kp3d_ros.skeleton import JOINT_NAMES, NUM_CLASSES, PART_NAMES

POINT_BINS = (1, 25, 50, 100, 200, 400, np.inf)
DISTANCE_BINS = (0, 10, 20, 30, 40, 60, np.inf)


def open_backend(model_path: str | Path, batch: int, threads: int) -> tuple[Backend, str]:
    from kp3d_ros.backends.factory import create_backend

    name = "torch" if Path(model_path).suffix == ".pt" else "onnxruntime"
    return create_backend(name, model_path, max_batch=batch, threads=threads)


GROUND_CLEARANCE = 0.2  # m above the crop's ground that count as the person (the node's ground.clearance)
BODY_CORE_RADIUS = 0.5  # m, the node's detection.body_core_radius
SHARE_THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
SCORED_POINTS = 50  # person returns of a crop that the pose-coverage figures score


def crop_body_share(sample: dict, parts: np.ndarray) -> float:
    """The node's person-versus-clutter score (pipeline.body_share) on a data set crop: its points more
    than GROUND_CLEARANCE above the crop's ground, within BODY_CORE_RADIUS of the crop's axis."""
    from kp3d_ros.core.pipeline import body_share

    points, centre = sample["points"], sample["centre"]
    return body_share(points, parts, centre[:2], points[:, 2] > centre[2] + GROUND_CLEARANCE, BODY_CORE_RADIUS)


def predict_dataset(backend: Backend, dataset, indices, batch: int, seed: int = 0) -> dict[str, np.ndarray | list]:
    """Predictions and truth for the chosen samples (skipping samples without points). Crops of clutter
    alone (is_person 0) give no keypoints; every crop gets its body share for the detection scores."""
    rng = np.random.default_rng(seed)
    out = {"pred": [], "gt": [], "num_points": [], "distance": [], "preset": [], "conf": None, "family": [],
           "negative_share": [], "person_share": [], "person_points": [], "part_accuracy": []}
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for s in range(0, len(indices), batch):
        samples = [dataset[int(i)] for i in indices[s : s + batch]]
        samples = [x for x in samples if len(x["points"])]
        if not samples:
            continue
        crops = [x["points"] for x in samples]
        prepared = prepare_batch(crops, backend.num_points, rng)
        result = backend.infer(prepared.points)
        person = np.array([bool(x.get("is_person", 1)) for x in samples])
        out["pred"].append(restore_keypoints(result.keypoints, prepared)[person])
        out["gt"].append(np.stack([x["joints"] for x in samples])[person])
        parts = point_parts(result.logits, prepared.indices, prepared.counts, crops)
        for x, p, is_person in zip(samples, parts, person, strict=True):
            conf += metrics.confusion_matrix(p, x["parts"], NUM_CLASSES)
            if "centre" in x:
                share = crop_body_share(x, p)
                if not is_person:
                    out["negative_share"].append(share)
                else:
                    out["person_share"].append(share)
                    out["person_points"].append(int(x["num_person_points"]))
            if not is_person:
                continue
            body = x["parts"] > 0
            out["part_accuracy"].append(float((p[body] == x["parts"][body]).mean()) if body.any() else np.nan)
            out["num_points"].append(int(x.get("num_person_points", len(x["points"]))))
            out["distance"].append(float(x.get("distance", np.linalg.norm(x["points"].mean(0)[:2]))))
            out["preset"].append(str(x.get("preset", "")))
            out["family"].append(int(x.get("family", -1)))
    out["pred"], out["gt"] = np.concatenate(out["pred"]), np.concatenate(out["gt"])
    out["conf"] = conf
    return out


def detection_curve(pred: dict, min_points: int = SCORED_POINTS) -> list[dict]:
    """Crop-level precision and recall of the body-share gate at each of SHARE_THRESHOLDS: people with at
    least ``min_points`` returns against crops of clutter alone (one of each per crop, so precision
    depends on the split's share of negatives)."""
    people = np.array(pred["person_share"])[np.array(pred["person_points"], dtype=np.int64) >= min_points]
    negatives = np.array(pred["negative_share"])
    rows = []
    for t in SHARE_THRESHOLDS:
        tp, fp = int((people >= t).sum()), int((negatives >= t).sum())
        rows.append({"threshold": t, "recall": tp / max(len(people), 1), "precision": tp / max(tp + fp, 1),
                     "people": len(people), "negatives": len(negatives), "false": fp})
    return rows


def family_summary(pred: dict, min_points: int = SCORED_POINTS) -> dict[str, dict]:
    """Keypoint scores per pose family (kp3d_ros.synth.poses) over people with at least min_points returns,
    with the mean share of each person's points given their own body part (part_accuracy)."""
    from kp3d_ros.synth.poses import FAMILIES

    family = np.array(pred["family"], dtype=np.int64)
    scored = np.array(pred["num_points"]) >= min_points
    part_accuracy = np.array(pred["part_accuracy"], dtype=np.float64)
    out = {}
    for k, name in enumerate(FAMILIES):
        sel = scored & (family == k)
        if sel.any():
            out[name] = metrics.keypoint_summary(pred["pred"][sel], pred["gt"][sel]) | {
                "part_accuracy": float(np.nanmean(part_accuracy[sel]))}
    return out


def summarise(pred: dict) -> dict:
    """All the numbers of the model card from predict_dataset's output."""
    p, g = pred["pred"], pred["gt"]
    n_pts, dist = np.array(pred["num_points"]), np.array(pred["distance"])
    person_err = metrics.joint_errors(p, g).mean(1) * 100
    dense = n_pts >= 100
    seg = metrics.segmentation_scores(pred["conf"])
    presets = sorted(set(pred["preset"]))
    preset_arr = np.array(pred["preset"])
    return {
        "overall": metrics.keypoint_summary(p, g),
        "ge100_points": metrics.keypoint_summary(p[dense], g[dense]) if dense.any() else {},
        "by_points": metrics.binned_errors(person_err, n_pts, POINT_BINS),
        "by_distance": metrics.binned_errors(person_err, dist, DISTANCE_BINS),
        "by_preset": {k: metrics.keypoint_summary(p[preset_arr == k], g[preset_arr == k]) for k in presets if k},
        "per_joint_cm": dict(zip(JOINT_NAMES, (metrics.per_joint_errors(p, g) * 100).tolist(), strict=True)),
        "ge50_points": metrics.keypoint_summary(p[n_pts >= SCORED_POINTS], g[n_pts >= SCORED_POINTS])
        if (n_pts >= SCORED_POINTS).any() else {},
        "by_family": family_summary(pred),
        "detection": detection_curve(pred) if pred["negative_share"] else [],
        "segmentation": {"accuracy": seg["accuracy"], "miou": seg["miou"],
                         "iou": dict(zip(PART_NAMES, [float(v) for v in seg["iou"]], strict=True))},
    }


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) and abs(v) < 1 else (f"{v:.2f}" if isinstance(v, float) else str(v))


def to_markdown(summary: dict) -> str:
    lines = ["| subset | people | MPJPE cm | N-MPJPE cm | PA-MPJPE cm | PCK@5 | PCK@10 | PCK@20 |", "|---" * 8 + "|"]
    rows = [("all", summary["overall"]), (">= 50 points", summary.get("ge50_points", {})),
            (">= 100 points", summary["ge100_points"])]
    rows += [(f"preset {k}", v) for k, v in summary["by_preset"].items()]
    rows += [(f"family {k} (>= {SCORED_POINTS} points)", v) for k, v in summary.get("by_family", {}).items()]
    for name, s in rows:
        if s:
            lines.append(f"| {name} | {s['people']} | {s['mpjpe_cm']:.2f} | {s['n_mpjpe_cm']:.2f} | "
                         f"{s['pa_mpjpe_cm']:.2f} | {s['pck@5cm']:.3f} | {s['pck@10cm']:.3f} | {s['pck@20cm']:.3f} |")
    for key, title in (("by_points", "person points"), ("by_distance", "distance m")):
        lines += ["", f"| {title} | people | MPJPE cm |", "|---|---|---|"]
        lines += [f"| [{r['lo']:g}, {r['hi']:g}) | {r['count']} | {r['mean']:.2f} |"
                  for r in summary[key] if r["count"]]
    if summary.get("detection"):
        lines += ["", f"Body-share gate on crops (people with >= {SCORED_POINTS} points against crops of clutter "
                  "alone):", "", "| min_body_share | recall | precision | false | people | negatives |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['threshold']:g} | {r['recall']:.3f} | {r['precision']:.3f} | {r['false']} | {r['people']} | "
                  f"{r['negatives']} |" for r in summary["detection"]]
    lines += ["", "| joint | MPJPE cm |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in summary["per_joint_cm"].items()]
    seg = summary["segmentation"]
    lines += ["", f"Segmentation (all original points, 15 classes): accuracy {seg['accuracy']:.3f}, "
              f"mIoU {seg['miou']:.3f}", "", "| part | IoU |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in seg["iou"].items() if np.isfinite(v)]
    return "\n".join(lines)


def plot_examples(backend: Backend, dataset, indices, path: str | Path, seed: int = 0) -> None:
    """A PNG: points coloured by predicted part, predicted (solid) and true (dashed) skeletons."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kp3d_ros.skeleton import draw_segments

    samples = [dataset[int(i)] for i in indices]
    crops = [x["points"] for x in samples]
    prepared = prepare_batch(crops, backend.num_points, np.random.default_rng(seed))
    result = backend.infer_all(prepared.points)
    kps = restore_keypoints(result.keypoints, prepared)
    parts = point_parts(result.logits, prepared.indices, prepared.counts, crops)
    fig = plt.figure(figsize=(3.2 * len(samples), 4.2))
    cmap = plt.get_cmap("tab20")
    for k, (x, kp, pt) in enumerate(zip(samples, kps, parts, strict=True)):
        ax = fig.add_subplot(1, len(samples), k + 1, projection="3d")
        pts = x["points"]
        ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=1.5, c=cmap(pt % 20), alpha=0.5)
        for joints, style, width in ((kp, "-", 2.4), (x["joints"], "--", 1.4)):
            segs, cols = draw_segments(joints)
            for seg, col in zip(segs, cols, strict=True):
                ax.plot(*seg.T, style, color=col if style == "-" else "k", lw=width)
        err = 100 * metrics.mpjpe(kp[None], x["joints"][None])
        ax.set_title(f"{len(pts)} pts, {x.get('preset', '')}\nMPJPE {err:.1f} cm", fontsize=8)
        centre = x["joints"].mean(0)
        for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre, strict=True):
            setter(c - 1.0, c + 1.0)
        ax.set_box_aspect((1, 1, 1))
        ax.tick_params(labelsize=5)
    fig.suptitle("predicted (solid; left blue, right orange) vs ground truth (black dashed); "
                 "points coloured by predicted part", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


BAG_MATCH_DISTANCE = 1.0  # m, mean joint distance beyond which a predicted and a true person stay unmatched
LOW_HEAD_HEIGHT = 0.7  # m: a true person whose head centre is lower above their lowest joint is "low" (lying, crawling)


def is_low(people: np.ndarray) -> np.ndarray:
    """(P,) whether each true person (P, J, 3) is low: head centre less than LOW_HEAD_HEIGHT above the lowest joint."""
    head = people[:, JOINT_NAMES.index("head_center"), 2]
    return head - people[..., 2].min(-1) < LOW_HEAD_HEIGHT


def evaluate_bag(args: argparse.Namespace) -> int:
    """Run the perception core (kp3d_ros.core.pipeline, as `kp3d infer` does) over the bag's scans and
    compare every frame's people with the ground truth on --gt-topic: PEM (Hungarian matching, 0.25 m
    penalty per keypoint of a missed or false person), recall, precision and MPJPE etc. over the matched
    people, and the recall of the low true people alone (is_low: lying, crawling). With --min-points N, true
    people with fewer than N returns (--seg-topic) are not scored: a prediction matched to one of them is
    neither right nor false."""
    from kp3d_ros.core.bagio import BagError, iter_scans, read_keypoints, read_point_counts
    from kp3d_ros.core.params import load_params, parse_overrides
    from kp3d_ros.core.pipeline import PerceptionPipeline

    backend = "torch" if Path(args.model).suffix == ".pt" else "onnxruntime"
    try:
        gt = read_keypoints(args.bag, args.gt_topic)
        counts = read_point_counts(args.bag, args.seg_topic) if args.min_points > 0 else {}
        params = load_params(args.params, {**parse_overrides(args.set), "network.model_path": str(args.model),
                                           "network.backend": backend, "network.threads": args.threads})
        pipeline = PerceptionPipeline.from_params(params)
        pred_frames, gt_frames, matched_pred, matched_gt = [], [], [], []
        low = {"matched": 0, "missed": 0}
        for scan in iter_scans(args.bag, args.topic):
            result = pipeline.process(scan.points, scan.stamp_ns)
            if scan.stamp_ns not in gt:
                continue
            frame_counts = counts.get(scan.stamp_ns, {})
            scored = {k: frame_counts.get(k, 0) >= args.min_points if args.min_points > 0 else True
                      for k in gt[scan.stamp_ns]}
            truth = [j for k, j in gt[scan.stamp_ns].items() if np.isfinite(j).all() and scored[k]]
            ignored = [j for k, j in gt[scan.stamp_ns].items() if np.isfinite(j).all() and not scored[k]]
            truth = np.stack(truth) if truth else np.zeros((0, len(JOINT_NAMES), 3))
            people = [p.joints for p in result.people if np.isfinite(p.joints).all()]
            people = np.stack(people) if people else np.zeros((0, len(JOINT_NAMES), 3))
            people = _without_ignored(people, truth, np.stack(ignored) if ignored else truth[:0])
            pred_frames.append(people)
            gt_frames.append(truth)
            found = np.zeros(len(truth), bool)
            if len(people) and len(truth):
                from scipy.optimize import linear_sum_assignment

                cost = np.linalg.norm(people[:, None] - truth[None], axis=-1).mean(-1)
                rows, cols = linear_sum_assignment(cost)
                keep = cost[rows, cols] <= BAG_MATCH_DISTANCE
                matched_pred.append(people[rows[keep]])
                matched_gt.append(truth[cols[keep]])
                found[cols[keep]] = True
            low_truth = is_low(truth)
            low["matched"] += int((found & low_truth).sum())
            low["missed"] += int((~found & low_truth).sum())
    except (BagError, FileNotFoundError, ValueError, RuntimeError) as exc:  # ParameterError is a ValueError
        print(f"error: {exc}")
        return 1
    if not gt_frames:
        print(f"error: no scan on {args.topic} has ground truth on {args.gt_topic}")
        return 1
    pem = metrics.pem(pred_frames, gt_frames, max_match_distance=BAG_MATCH_DISTANCE)
    summary = {"frames": len(gt_frames), "backend": pipeline.backend_reason, "min_points": args.min_points,
               "pem": pem, "recall": pem["matched"] / max(pem["matched"] + pem["missed"], 1),
               "precision": pem["matched"] / max(pem["matched"] + pem["false"], 1),
               "low_people": low | {"recall": low["matched"] / max(low["matched"] + low["missed"], 1)}}
    if matched_gt:
        summary["matched"] = metrics.keypoint_summary(np.concatenate(matched_pred), np.concatenate(matched_gt))
    print(json.dumps(summary, indent=1, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=float))
    return 0


def _without_ignored(people: np.ndarray, truth: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """The predicted people left after matching all true people (scored and ignored) by the Hungarian
    method within BAG_MATCH_DISTANCE and dropping the predictions matched to an ignored one."""
    if not len(people) or not len(ignored):
        return people
    from scipy.optimize import linear_sum_assignment

    everyone = np.concatenate([truth, ignored])
    cost = np.linalg.norm(people[:, None] - everyone[None], axis=-1).mean(-1)
    rows, cols = linear_sum_assignment(cost)
    drop = rows[(cost[rows, cols] <= BAG_MATCH_DISTANCE) & (cols >= len(truth))]
    return np.delete(people, drop, axis=0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint (.pt, torch) or ONNX model (.onnx)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="data set split directory (e.g. data/stage1/test)")
    source.add_argument("--bag", help="ROS 2 bag with LiDAR scans and ground-truth keypoints")
    parser.add_argument("--topic", default="/points", help="PointCloud2 LiDAR topic of the bag")
    parser.add_argument("--gt-topic", default="/kp3d/gt/keypoints", help="ground truth (layouts.KEYPOINTS)")
    parser.add_argument("--seg-topic", default="/kp3d/gt/segmentation",
                        help="with --min-points: the true points of each person (layouts.SEGMENTATION)")
    parser.add_argument("--min-points", type=int, default=0,
                        help="with --bag: score only true people with at least this many returns (0: all)")
    parser.add_argument("--max-samples", type=int, default=0, help="evaluate at most this many samples (0: all)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the summary as JSON here")
    parser.add_argument("--markdown", help="write the tables as markdown here")
    parser.add_argument("--plot", help="write a PNG of predictions vs ground truth here")
    parser.add_argument("--params", help="with --bag: node parameter YAML for the pipeline (default: the defaults)")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="NAME=VALUE",
                        help="with --bag: parameter overrides, e.g. --set detection.min_body_share=0.8")


def main(args: argparse.Namespace) -> int:
    if args.bag:
        return evaluate_bag(args)
    from kp3d_ros.synth.dataset import ShardedDataset

    try:
        dataset = ShardedDataset(args.data, cache_shards=1 << 20)
        backend, reason = open_backend(args.model, args.batch, args.threads)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    count = len(dataset) if not args.max_samples else min(args.max_samples, len(dataset))
    indices = np.arange(count)
    start = time.time()
    pred = predict_dataset(backend, dataset, indices, args.batch)
    summary = summarise(pred) | {"model": str(args.model), "data": str(args.data), "backend": reason,
                                 "samples": len(pred["gt"]), "wall_s": round(time.time() - start, 1)}
    table = to_markdown(summary)
    print(f"{summary['samples']} samples from {args.data} with {reason} in {summary['wall_s']} s\n")
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=float))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.plot:
        dense = [i for i in indices
                 if dataset[int(i)].get("is_person", 1) and dataset[int(i)]["num_person_points"] >= 100]
        rng = np.random.default_rng(0)
        chosen = rng.choice(dense or list(indices), size=min(4, len(dense or indices)), replace=False)
        plot_examples(backend, dataset, sorted(chosen), args.plot)
    return 0

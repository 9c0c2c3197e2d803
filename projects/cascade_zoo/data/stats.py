"""Statistics of a COCO-format instance dataset (objects per image, sizes, aspect ratios)."""

import json
from collections import Counter
from typing import Dict

import numpy as np

from ..utils.markdown import markdown_table

# COCO's area ranges (pixels^2) for APs / APm / APl.
COCO_AREA_RANGES = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, float("inf"))}


def coco_statistics(json_file: str) -> Dict:
    """Numbers describing a COCO instances JSON.

    Returns a dict with: images, objects, objects_per_image (min/median/mean/max and a histogram
    over bins 1-5, 6-10, 11-20, 21-30, 31+), object size sqrt(area) percentiles, the share of
    small/medium/large objects by COCO's area ranges, box aspect-ratio (w/h) percentiles, and
    objects per category.
    """
    with open(json_file) as f:
        data = json.load(f)
    images = data["images"]
    anns = [a for a in data["annotations"] if not a.get("iscrowd", 0)]
    per_image = Counter(a["image_id"] for a in anns)
    counts = np.array([per_image.get(img["id"], 0) for img in images])
    areas = np.array([a["area"] for a in anns], dtype=float)
    wh = np.array([a["bbox"][2:] for a in anns], dtype=float).reshape(-1, 2)
    aspect = wh[:, 0] / np.maximum(wh[:, 1], 1e-6)
    bins = [(0, 0), (1, 5), (6, 10), (11, 20), (21, 30), (31, 10**9)]
    names = {c["id"]: c["name"] for c in data["categories"]}
    pct = (5, 25, 50, 75, 95)
    return {
        "images": len(images),
        "objects": len(anns),
        "objects_per_image": {
            "min": int(counts.min()) if len(counts) else 0,
            "median": float(np.median(counts)) if len(counts) else 0.0,
            "mean": float(counts.mean()) if len(counts) else 0.0,
            "max": int(counts.max()) if len(counts) else 0,
            "histogram": {
                (f"{lo}-{hi}" if hi < 10**9 else f"{lo}+") if lo else "0": int(
                    ((counts >= lo) & (counts <= hi)).sum()
                )
                for lo, hi in bins
            },
        },
        "size_sqrt_area_percentiles": {
            f"p{p}": float(np.percentile(np.sqrt(areas), p)) if len(areas) else 0.0 for p in pct
        },
        "size_share": {
            k: float(((areas >= lo) & (areas < hi)).mean()) if len(areas) else 0.0
            for k, (lo, hi) in COCO_AREA_RANGES.items()
        },
        "aspect_ratio_percentiles": {
            f"p{p}": float(np.percentile(aspect, p)) if len(aspect) else 0.0 for p in pct
        },
        "objects_per_category": {
            names[k]: v for k, v in sorted(Counter(a["category_id"] for a in anns).items())
        },
    }


def statistics_markdown(name: str, stats: Dict) -> str:
    """The statistics as a Markdown section."""
    opi = stats["objects_per_image"]
    lines = [
        f"### `{name}`: {stats['images']} images, {stats['objects']} objects",
        "",
        f"Objects per image: min {opi['min']}, median {opi['median']:g}, "
        f"mean {opi['mean']:.1f}, max {opi['max']}.",
        "",
        markdown_table(
            ["objects in image"] + list(opi["histogram"]),
            [["images"] + list(opi["histogram"].values())],
        ),
        "",
        markdown_table(
            ["object size sqrt(area), px"] + list(stats["size_sqrt_area_percentiles"]),
            [[""] + [f"{v:.1f}" for v in stats["size_sqrt_area_percentiles"].values()]],
        ),
        "",
        "Share of objects by COCO area range: "
        + ", ".join(f"{k} {v:.1%}" for k, v in stats["size_share"].items())
        + ".",
        "",
        "Box aspect ratio w/h percentiles: "
        + ", ".join(f"{k} {v:.2f}" for k, v in stats["aspect_ratio_percentiles"].items())
        + ".",
        "",
        "Objects per class: "
        + ", ".join(f"{k} {v}" for k, v in stats["objects_per_category"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)

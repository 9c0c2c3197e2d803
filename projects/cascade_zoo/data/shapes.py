"""The embedded "shapes" instance-segmentation dataset.

Images are generated procedurally and deterministically from a seed, then written once, as JPEG
images plus a COCO-format JSON with boxes and RLE masks, to a cache directory under
``$DETECTRON2_DATASETS/shapes/`` (default ``./datasets/shapes/``). The generator aims at a fair test
of high-quality detection on a CPU:

- six classes whose outlines differ, stretched to aspect ratios from 1:3 to 3:1 and rotated;
- object sizes log-uniform from a few pixels to most of the image;
- 1 to 40 objects per image, later objects partially occluding earlier ones (each object keeps at
  least ``MIN_VISIBLE_FRACTION`` of its area visible, so every annotation is a real object);
- textured backgrounds (low-frequency colour noise, gradients, unlabelled clutter strokes) and
  textured objects with blurred, anti-aliased edges, plus sensor noise and JPEG compression.

Ground truth is the visible part of each object: its mask is the supersampled outline's coverage
>= 0.5 minus what later objects cover, and its box is that mask's tight box.
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)

CLASSES = ("circle", "triangle", "rectangle", "star", "hexagon", "cross")
# Bump when the generator's output changes: it is part of the cache directory's name.
GENERATOR_VERSION = 1
SUPERSAMPLE = 4
MIN_VISIBLE_FRACTION = 0.5
MIN_VISIBLE_PIXELS = 12


@dataclass(frozen=True)
class ShapesSpec:
    """What one split of the dataset contains. Equal specs give byte-identical files."""

    num_images: int
    seed: int
    min_side: int = 224
    max_side: int = 320
    max_objects: int = 40
    min_object_size: float = 10.0

    def key(self) -> str:
        text = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def _outline(cls_name: str, rng: np.random.Generator) -> np.ndarray:
    """A closed outline of the class in unit coordinates, shape (V, 2), roughly inside [-1, 1]."""
    if cls_name == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if cls_name == "triangle":
        t = np.array([90, 210, 330]) * np.pi / 180 + rng.uniform(-0.25, 0.25, 3)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if cls_name == "rectangle":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    if cls_name == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False) + np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if cls_name == "hexagon":
        t = np.linspace(0, 2 * np.pi, 6, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if cls_name == "cross":
        a = rng.uniform(0.28, 0.4)
        return np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a],
             [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]],
            dtype=float,
        )  # fmt: skip
    raise ValueError(f"unknown shape class {cls_name!r}; known: {CLASSES}")


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _rasterize(poly: np.ndarray, height: int, width: int):
    """Coverage of a polygon (image coordinates, pixel centres at +0.5) on the image grid.

    Returns (y0, x0, coverage) where coverage is a float array in [0, 1] of the polygon's
    bounding region clipped to the image, or None when the polygon lies outside the image.
    """
    x0 = max(int(math.floor(poly[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(poly[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(poly[:, 0].max())) + 1, width)
    y1 = min(int(math.ceil(poly[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    s = SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    pts = [((px - x0) * s, (py - y0) * s) for px, py in poly]
    ImageDraw.Draw(canvas).polygon(pts, fill=255)
    coverage = canvas.resize((x1 - x0, y1 - y0), Image.BOX)
    return y0, x0, np.asarray(coverage, dtype=np.float32) / 255.0


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int, channels: int):
    grid = rng.uniform(0, 255, (cells, cells, channels)).astype(np.uint8)
    img = Image.fromarray(grid.squeeze(-1) if channels == 1 else grid)
    return np.asarray(img.resize((width, height), Image.BICUBIC), dtype=np.float32).reshape(
        height, width, channels
    )


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.uniform(40, 215, 3)
    img = np.empty((height, width, 3), np.float32)
    img[:] = base
    # low-frequency colour texture and a linear gradient
    img += (_smooth_noise(rng, height, width, int(rng.integers(3, 10)), 3) - 128) * rng.uniform(
        0.2, 0.6
    )
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height) * rng.uniform(-60, 60)
    img += ramp[..., None]
    # unlabelled clutter: thin random strokes
    clutter = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(0, 12))):
        pts = rng.uniform(0, 1, (int(rng.integers(2, 5)), 2)) * [width, height]
        color = tuple(int(c) for c in rng.integers(0, 256, 3)) + (int(rng.integers(60, 200)),)
        draw.line([tuple(p) for p in pts], fill=color, width=int(rng.integers(1, 4)))
    clutter = np.asarray(clutter, dtype=np.float32)
    alpha = clutter[..., 3:] / 255.0
    return img * (1 - alpha) + clutter[..., :3] * alpha


def _num_objects(rng: np.random.Generator, max_objects: int) -> int:
    # Mostly sparse scenes, with a long tail of crowded ones.
    u = rng.uniform()
    if u < 0.5:
        n = rng.integers(1, 9)
    elif u < 0.85:
        n = rng.integers(9, 21)
    else:
        n = rng.integers(21, 41)
    return int(min(n, max_objects))


def generate_image(spec: ShapesSpec, index: int) -> Tuple[np.ndarray, List[Dict]]:
    """Generate image ``index`` of a split.

    Returns:
        image: uint8 array (H, W, 3), RGB.
        objects: one dict per object, in drawing order, with "category" (index into CLASSES)
            and "mask" (bool array (H, W), the visible part).
    """
    rng = np.random.default_rng([spec.seed, index, GENERATOR_VERSION])
    height = int(rng.integers(spec.min_side, spec.max_side + 1))
    width = int(rng.integers(spec.min_side, spec.max_side + 1))
    img = _background(rng, height, width)
    short = min(height, width)
    target = _num_objects(rng, spec.max_objects)
    # Crowded images get smaller objects, so that they can fit.
    max_size = min(0.75 * short, 3.2 * short / math.sqrt(target))

    objects: List[Dict] = []  # each: category, mask (visible), full_area
    for _ in range(target):
        for _attempt in range(8):
            cat = int(rng.integers(len(CLASSES)))
            poly = _outline(CLASSES[cat], rng)
            aspect = math.exp(rng.uniform(math.log(1 / 3), math.log(3)))
            poly = poly * [math.sqrt(aspect), 1 / math.sqrt(aspect)]
            theta = rng.uniform(0, 2 * np.pi)
            rot = np.array(
                [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
            )
            poly = poly @ rot.T
            size = math.exp(rng.uniform(math.log(spec.min_object_size), math.log(max_size)))
            poly = poly * (size / math.sqrt(_polygon_area(poly)))
            centre = rng.uniform([0, 0], [width, height])
            poly = poly + centre
            raster = _rasterize(poly, height, width)
            if raster is None:
                continue
            y0, x0, coverage = raster
            full_area = _polygon_area(poly)
            inside = coverage >= 0.5
            if inside.sum() < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * full_area):
                continue  # mostly outside the image
            window = (slice(y0, y0 + coverage.shape[0]), slice(x0, x0 + coverage.shape[1]))
            # Would it hide too much of an earlier object?
            ok = True
            for obj in objects:
                left = obj["mask"][window] & inside
                if left.any():
                    visible = obj["mask"].sum() - left.sum()
                    if visible < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * obj["full_area"]):
                        ok = False
                        break
            if not ok:
                continue
            for obj in objects:
                obj["mask"][window] &= ~inside
            mask = np.zeros((height, width), bool)
            mask[window] = inside
            objects.append({"category": cat, "mask": mask, "full_area": full_area})
            # appearance: textured colour, soft edges
            color = rng.uniform(0, 255, 3)
            h, w = coverage.shape
            tex = (_smooth_noise(rng, h, w, 3, 1) - 128) * rng.uniform(0.0, 0.5)
            blur = rng.uniform(0.0, 1.2)
            alpha = Image.fromarray((coverage * 255).astype(np.uint8))
            if blur > 0.3:
                alpha = alpha.filter(ImageFilter.GaussianBlur(blur))
            alpha = np.asarray(alpha, np.float32)[..., None] / 255.0
            patch = img[window]
            img[window] = patch * (1 - alpha) + (color + tex) * alpha
            break

    img += rng.normal(0, rng.uniform(2, 12), img.shape)
    image = np.clip(img, 0, 255).astype(np.uint8)
    return image, [{"category": o["category"], "mask": o["mask"]} for o in objects]


def _annotations(objects: List[Dict], image_id: int, first_ann_id: int) -> List[Dict]:
    anns = []
    for k, obj in enumerate(objects):
        mask = obj["mask"]
        ys, xs = np.nonzero(mask)
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x0, y0 = int(xs.min()), int(ys.min())
        anns.append(
            {
                "id": first_ann_id + k,
                "image_id": image_id,
                "category_id": obj["category"] + 1,
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                "area": int(mask.sum()),
                "segmentation": rle,
                "iscrowd": 0,
            }
        )
    return anns


def _write_one(args) -> Tuple[Dict, List[Dict]]:
    spec, index, image_dir = args
    image, objects = generate_image(spec, index)
    file_name = f"{index:06d}.jpg"
    Image.fromarray(image).save(os.path.join(image_dir, file_name), quality=90)
    info = {"id": index, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]}
    # annotation ids: unique per image; renumbered consecutively by the caller
    return info, _annotations(objects, index, 0)


_WORKER_ENV = "CASCADE_ZOO_SHAPES_WORKER"


def _write_in_workers(jobs, workers: int):
    """``_write_one`` over ``jobs`` in spawned processes; None if the workers died (the caller
    then writes in this process). A script without an ``if __name__ == "__main__":`` guard is
    re-run by each spawned worker, which would wait for the lock this process holds: the worker
    stops at once instead (see ensure_shapes), and the split is written here, with a warning."""
    os.environ[_WORKER_ENV] = "1"  # inherited by the workers only while they start
    try:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            return list(pool.map(_write_one, jobs, chunksize=16))
    except BrokenProcessPool:
        logger.warning(
            "Shapes generation workers stopped while starting (a script whose top level is not "
            'guarded by `if __name__ == "__main__":` is re-run by each spawned process); '
            "generating in this process instead"
        )
        return None
    finally:
        os.environ.pop(_WORKER_ENV, None)


def shapes_dir(root: str, name: str, spec: ShapesSpec) -> Path:
    return Path(root) / "shapes" / f"{name}-{spec.key()}"


def ensure_shapes(root: str, name: str, spec: ShapesSpec, workers: Optional[int] = None) -> Path:
    """Generate the split into its cache directory unless it is there already.

    Safe to call from several processes at once (a file lock serialises them). Returns the
    directory, which holds ``annotations.json`` and ``images/``.
    """
    out = shapes_dir(root, name, spec)
    done = out / "DONE"
    if done.exists():
        return out
    if os.environ.get(_WORKER_ENV):
        raise RuntimeError(
            f"shapes split '{name}' requested inside a generation worker: the parent process is "
            "generating it (this script's top level is being re-run by multiprocessing's spawn)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return out
        logger.info(f"Generating {spec.num_images} '{name}' images into {out} ...")
        start = time.perf_counter()
        tmp = out.parent / f".{out.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        (tmp / "images").mkdir(parents=True)
        jobs = [(spec, i, str(tmp / "images")) for i in range(spec.num_images)]
        workers = workers or min(os.cpu_count() or 1, 8)
        results = None
        if workers > 1 and spec.num_images >= 64:
            results = _write_in_workers(jobs, workers)
        if results is None:
            workers = 1
            results = [_write_one(job) for job in jobs]
        images, annotations = [], []
        for info, anns in results:
            images.append(info)
            for ann in anns:
                ann["id"] = len(annotations) + 1
                annotations.append(ann)
        coco = {
            "info": {
                "description": f"cascade-zoo shapes '{name}'",
                "version": str(GENERATOR_VERSION),
                "spec": asdict(spec),
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)
            ],
        }
        with open(tmp / "annotations.json", "w") as f:
            json.dump(coco, f)
        os.replace(tmp, out)
        done.touch()
        with contextlib.suppress(OSError):
            os.remove(out.parent / f".{out.name}.lock")
        logger.info(
            f"Generated '{name}': {len(images)} images, {len(annotations)} objects in "
            f"{time.perf_counter() - start:.1f} s ({workers} process(es))"
        )
    return out

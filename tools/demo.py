#!/usr/bin/env python
"""Run a model on images or a video and draw its predictions (like Detectron2's demo/demo.py).

    python tools/demo.py --config-file CONFIG --input img1.jpg 'dir/*.png' some_dir/ \
        --output out/ [--confidence-threshold 0.5] [--stages] --opts MODEL.WEIGHTS model.pth
    python tools/demo.py --config-file CONFIG --video-input clip.mp4 --output out/ \
        --opts MODEL.WEIGHTS model.pth

Config overrides go after --opts, last, as in Detectron2's demo; the older form without --opts
(trailing KEY VALUE pairs, also right after --input's files) still works. MODEL.WEIGHTS may be a
file, a URL, or a detectron2:// / cascade_zoo:// model-zoo name; it is loaded safely (ZooPredictor:
a checkpoint whose unpickling could run code is refused unless ZOO.CHECKPOINT.ALLOW_UNSAFE_PICKLE).

--input takes files, glob patterns and directories (their image files, by extension). Pictures go
to --output: a directory (one picture per input, same file name, PNG for non-PNG/JPEG inputs), or
a file name when there is one input. A video goes to --output/<name>.mp4 (or --output if it ends
in .mp4). Without --output, only the number of detections is printed. --stages draws, for a
cascade of this project, each stage's detections and the ensemble's side by side.

An input that cannot be read gets an error line naming it; the others are still processed, and
the exit status is 1 if any input failed.
"""

import argparse
import glob
import logging
import os
import sys
import time
from typing import List, Tuple

import cascade_zoo  # noqa: F401  (first: it quiets the dependencies' import-time warnings)

# isort: split
import numpy as np
import tqdm
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from PIL import Image

from cascade_zoo import ZooPredictor, setup_cfg
from cascade_zoo.data import check_image_mode
from cascade_zoo.engine.checkpoint import UnsafeCheckpointError
from cascade_zoo.predictor import add_config_arguments, config_overrides, missing_weights_message
from cascade_zoo.visualize import draw_outputs, montage

logger = logging.getLogger("cascade_zoo.demo")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_inputs(patterns: List[str]) -> Tuple[List[str], List[str]]:
    """(image paths, errors): files as given, globs expanded, directories' image files."""
    paths, errors = [], []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, name)
                for name in os.listdir(pattern)
                if name.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(pattern, name))
            )
            if not found:
                errors.append(
                    f"{pattern}: directory holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
                )
            paths += found
        elif os.path.exists(pattern):
            paths.append(pattern)
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
            if not found:
                errors.append(f"{pattern}: no such file, directory or matching files")
            paths += [p for p in found if os.path.isfile(p)]
    return paths, errors


class Demo:
    def __init__(self, cfg, confidence_threshold: float, stages: bool):
        self.predictor = ZooPredictor(cfg)
        self.metadata = MetadataCatalog.get(
            cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused"
        )
        self.threshold = confidence_threshold
        self.stages = stages

    def run(self, bgr: np.ndarray) -> Tuple[int, np.ndarray]:
        """(number of detections above the threshold, RGB picture)."""
        outputs = self.predictor(bgr if self.predictor.input_format == "BGR" else bgr[:, :, ::-1])
        count = int((outputs["instances"].scores >= self.threshold).sum())
        panels = draw_outputs(
            bgr[:, :, ::-1], outputs, self.metadata, self.threshold, stages=self.stages
        )
        return count, montage(panels, len(panels))


def _output_path(output: str, input_path: str, single: bool) -> str:
    if single and os.path.splitext(output)[1].lower() in IMAGE_EXTENSIONS:
        return output
    name = os.path.basename(input_path)
    if os.path.splitext(name)[1].lower() not in (".png", ".jpg", ".jpeg"):
        name = os.path.splitext(name)[0] + ".png"
    return os.path.join(output, name)


def run_images(demo: Demo, paths: List[str], output: str) -> int:
    failed = 0
    for path in paths:
        try:
            check_image_mode(path)  # a 16-bit image would be read as 255 almost everywhere
            bgr = read_image(path, format="BGR")
        except Exception as e:  # PIL raises several types for unreadable or truncated files
            logger.error(f"{path}: cannot read image: {type(e).__name__}: {e}")
            failed += 1
            continue
        start = time.perf_counter()
        count, picture = demo.run(bgr)
        line = f"{path}: {count} detections in {time.perf_counter() - start:.2f} s"
        if output:
            out = _output_path(output, path, len(paths) == 1)
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            Image.fromarray(picture).save(out)
            line += f" -> {out}"
        logger.info(line)
    return failed


def run_video(demo: Demo, path: str, output: str) -> int:
    import cv2

    video = cv2.VideoCapture(path)
    ok, frame = video.read()
    if not video.isOpened() or not ok:
        logger.error(f"{path}: cannot read video (OpenCV could not open it or decode a frame)")
        return 1
    fps = video.get(cv2.CAP_PROP_FPS) or 10.0
    total = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
    writer, out, frames = None, None, 0
    if output:
        name = os.path.splitext(os.path.basename(path))[0] + ".mp4"
        out = output if output.lower().endswith(".mp4") else os.path.join(output, name)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    logger.info(f"{path}: {total} frames at {fps:g} fps")
    progress = tqdm.tqdm(total=total or None, desc="frames", disable=total < 2)
    while ok:
        count, picture = demo.run(frame)
        progress.update()
        if out:
            if writer is None:
                size = (picture.shape[1], picture.shape[0])
                writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
            writer.write(np.ascontiguousarray(picture[:, :, ::-1]))
        frames += 1
        ok, frame = video.read()
    video.release()
    progress.close()
    if writer is not None:
        writer.release()
    logger.info(f"{path}: {frames} frames processed" + (f" -> {out}" if out else ""))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--input", nargs="+", default=[], help="image files, globs, directories")
    parser.add_argument("--video-input", help="a video file")
    parser.add_argument("--output", default="", help="output directory, or file for one input")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument(
        "--stages", action="store_true", help="one panel per cascade stage (and the ensemble)"
    )
    args = parser.parse_args(argv)
    opts = config_overrides(parser, args, "input")
    if not args.input and not args.video_input:
        parser.error("give --input and/or --video-input")
    setup_logger(name="cascade_zoo")
    cfg = setup_cfg(args.config_file, opts, freeze=False)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = min(
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, args.confidence_threshold
    )
    cfg.freeze()
    missing = missing_weights_message(cfg.MODEL.WEIGHTS)
    if missing:
        sys.exit(f"error: {missing}")

    paths, errors = expand_inputs(args.input)
    for error in errors:
        logger.error(error)
    try:
        demo = Demo(cfg, args.confidence_threshold, args.stages)
    except UnsafeCheckpointError as e:
        sys.exit(f"error: {e}")
    try:
        failed_images = run_images(demo, paths, args.output)
        failed_video = run_video(demo, args.video_input, args.output) if args.video_input else 0
    except ValueError as e:  # e.g. --stages with a model without stage-wise outputs
        sys.exit(f"error: {e}")
    failed = len(errors) + failed_images + failed_video
    if failed:
        logger.error(f"{failed} input(s) failed; {len(paths) - failed_images} image(s) processed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Command-line options of the detector, shared by ``maskflow.detect``, ``evaluate_scenes``
and ``calibrate``: each option left unset keeps the model's stored setting (conf/detect)."""
from __future__ import annotations

import argparse
import dataclasses

from maskflow.detection.detector import reporting_threshold
from maskflow.detection.finders import FINDERS, ONNX_FINDERS
from maskflow.detection.settings import DetectorSettings


def add_detector_args(parser: argparse.ArgumentParser) -> None:
    """Detector options; unset ones come from the model's stored settings (conf/detect)."""
    parser.add_argument("--backend", choices=("facedet",) + FINDERS, default=None,
                        help="face finder: yunet | yunet_n | ultraface | scrfd (non-commercial research use only) | fusion | "
                             "mtcnn | facedet (the trained CenterNet registered with the model); default: the model's")
    parser.add_argument("--finder-dir", action="append", default=[],
                        help="a folder with the finders' model files, searched before the model's own copies")
    parser.add_argument("--still-long-side", type=int, default=None,
                        help="yunet/yunet_n/ultraface/scrfd, still images: upscale to this long side for small faces (0: off)")
    parser.add_argument("--upscale-if-face-under", type=float, default=None, metavar="PX",
                        help="yunet/yunet_n/ultraface/scrfd, still images: the upscaled pass only where the first finds no face "
                             "or one under PX tall (0: always upscale)")
    parser.add_argument("--labels", choices=("detector", "classifier", "fuse"), default=None,
                        help="facedet: label faces by the detector's class maps, the crop classifier, or the mean of both")
    parser.add_argument("--long-side", type=int, default=None,
                        help="frames are resized to this long side (facedet, yunet, yunet_n, ultraface, scrfd); 480: yunet's real-time setting")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="facedet: also run the mirrored frame and average (more accurate, 2x the cost)")
    parser.add_argument("--zoom-side", type=int, default=None,
                        help="facedet, still images: a second pass at this long side for small faces (0: off)")
    parser.add_argument("--stills-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="facedet, still images: also run the mirrored image and average")
    parser.add_argument("--peaks", choices=("class", "face"), default=None,
                        help="facedet: a box per peak of each class map (a face may carry a second, lower-ranked "
                             "label) | one box per face, its most likely class")
    parser.add_argument("--max-side", type=int, default=None, help="mtcnn: frames are downscaled to this long side for detection")
    parser.add_argument("--min-face", type=float, default=None, help="mtcnn: smallest face (px, after downscaling) to look for")
    parser.add_argument("--min-confidence", type=float, default=None, help="face score (detector confidence) to keep a face")
    parser.add_argument("--runner-up", type=float, default=None,
                        help="scoring (mAP) only: a face also stands, ranked lower, for each other class whose "
                             "probability is at least this (0: never)")
    parser.add_argument("--min-score", type=float, default=None,
                        help="report faces whose score x detector_score is at least this (default: the operating point "
                             "stored with the model, chosen on val)")
    parser.add_argument("--all", dest="all_faces", action="store_true",
                        help="report every candidate face, the full ranked list (for mAP tools)")


def detector_settings(args: argparse.Namespace, stored: DetectorSettings) -> DetectorSettings:
    """The model's stored detector settings, with the options given on the command line."""
    finders = {k: dict(v) for k, v in stored.finders.items()}
    if args.long_side is not None:  # the finder's frame size too (yunet/ultraface/scrfd)
        for name in ONNX_FINDERS:
            finders.setdefault(name, {})["long_side"] = args.long_side
    if args.still_long_side is not None:
        for name in ONNX_FINDERS:
            finders.setdefault(name, {})["still_long_side"] = args.still_long_side or None
    if args.upscale_if_face_under is not None:
        for name in ONNX_FINDERS:
            finders.setdefault(name, {})["upscale_if_face_under"] = args.upscale_if_face_under or None
    stills = stored.stills
    if args.zoom_side is not None:
        stills = dataclasses.replace(stills, zoom_side=args.zoom_side or None)  # 0: off
    if args.stills_flip is not None:
        stills = dataclasses.replace(stills, flip=args.stills_flip)
    chosen = stored.with_options(max_side=args.max_side, min_face=args.min_face, min_confidence=args.min_confidence,
                                 backend=args.backend, labels=args.labels, long_side=args.long_side, flip=args.flip,
                                 peaks=args.peaks, runner_up=args.runner_up)
    return dataclasses.replace(chosen, stills=stills, finders=finders,
                               operating_point=reporting_threshold(stored.operating_point, args.min_score, args.all_faces))


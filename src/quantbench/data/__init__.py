"""Stage 1: data in. COCO folders, letterbox preprocessing, calibration tensors, downloads, default assets."""

"""Stage 4: evaluation. Detections, COCO metrics and matches, the pipelined evaluation, timing plans."""

"""quantbench: which mixed FP16/INT8 build of a YOLO11 detector is fastest within an mAP budget.

Data flows one way, one module per stage:
model source -> base ONNX (`export`) -> variant ONNX (`quantize`) -> engine (`backends`)
-> detections (`detections`) -> metrics (`metrics`) -> selection/report (`selection`, `report`).
"""

__version__ = "0.1.0"

"""Stage 2: builds. Model sources to base ONNX, the variant table, ModelOpt variant ONNX, graph queries."""

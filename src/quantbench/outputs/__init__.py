"""Stage 6: outputs. Reports, history, the compare gate, pytest-benchmark JSON, provenance."""

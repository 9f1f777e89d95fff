"""The host-pipeline benchmark (``make bench-host``): evaluation with inference replayed, old pipeline vs new."""

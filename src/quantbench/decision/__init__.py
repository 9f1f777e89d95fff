"""Stage 5: decision. Uncertainty, thresholds, the one gate, selection, and the stored results it reads."""

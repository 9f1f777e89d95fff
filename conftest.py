"""Root conftest. The bench plugin (`quantbench.plugin`) is found through its ``pytest11`` entry point
once quantbench is installed (``pip install -e .``); it stays dormant for ``pytest tests``.

A checkout used without installing it (``PYTHONPATH=src``, or an install made before the entry
point existed) has no entry point: the plugin is loaded here instead. Loading it both ways would
register the same module twice, which pytest refuses.
"""

from importlib.metadata import entry_points

if not any(ep.value.startswith("quantbench.plugin") for ep in entry_points(group="pytest11")):
    pytest_plugins = ["quantbench.plugin.entry"]

"""Root conftest: loads the bench suite's pytest plugin (see `fixtures/`).

It stays dormant for ``pytest tests``: the bench session is created only when ``bench/`` is among
the paths pytest runs.
"""

pytest_plugins = ["fixtures.plugin", "fixtures.fixtures"]

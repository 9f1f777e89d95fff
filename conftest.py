"""Root conftest: loads the bench suite's pytest plugins (see `fixtures/`).

They stay dormant for ``pytest tests``: the bench state is created only when ``bench/`` is among
the paths pytest runs.
"""

pytest_plugins = [
    "fixtures.options", "fixtures.state", "fixtures.pipeline", "fixtures.results", "fixtures.parallel",
]

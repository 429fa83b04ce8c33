"""pytest settings for ``make test-notebooks`` (nbval runs the notebooks in this folder as a learner opens them).

nbval fails a cell when its kernel sends no output message for 5 seconds after the cell finished executing,
a wait it does not expose as an option. On a loaded 2-core machine a training cell's queued progress messages
can take longer than that to arrive, so the wait is raised to 120 seconds; the execution timeout itself is
``--nbval-cell-timeout``.
"""

OUTPUT_TIMEOUT_SECONDS = 120


def pytest_collection_modifyitems(items):
    for item in items:
        if hasattr(item, "output_timeout"):  # nbval's IPyNbCell
            item.output_timeout = OUTPUT_TIMEOUT_SECONDS

"""Experiments over many runs: papermill sweeps (``sweep``, ``sweep_grid``, ``sweep_lock``), paired seed
statistics (``paired``) and the zoo's build (``zoo_build``)."""

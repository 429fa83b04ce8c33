"""``gopd_lab.data``: the embedded zoo (``zoo/``) and task data (``arith/``), installed as package data.

This folder sits at the repository root and is mapped into the package by ``pyproject.toml``
(``package-dir``), so a checkout and an installed wheel find it the same way:
``importlib.resources.files("gopd_lab.data")`` (see :func:`gopd_lab.tasks.data_dir`).
"""

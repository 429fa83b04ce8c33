"""Old path of the teacher server, kept for ``python -m gopd_lab.teacher_server``: the server and its client live
in :mod:`gopd_lab.scale.teacher_server` (importing this module warns ``DeprecationWarning``)."""

import warnings

from gopd_lab.scale.teacher_server import PROTOCOL, RemoteScorer, TeacherUnreachable, main

__all__ = ["PROTOCOL", "RemoteScorer", "TeacherUnreachable", "main"]

warnings.warn(
    "gopd_lab.teacher_server moved to gopd_lab.scale.teacher_server (python -m gopd_lab.scale.teacher_server)",
    DeprecationWarning,
    stacklevel=2,
)

if __name__ == "__main__":
    main()

"""The training loop: ``train`` runs each step as the method's recipe on a step context (``step``): the batch from
the student, the teacher or expert data (``collect``), scored by ``gopd_lab.scorers``, then advantages, loss and
the optimizer step (``update``, from ``gopd_lab.objectives`` and the method's objective). Around it: loading a run's
models (``load``), evaluation (``evaluate``) and the target's headroom (``headroom``), schedules (``schedules``),
checkpoints (``checkpoint``), run directories (``rundir``), the run record in config.json (``record``) and
experiment trackers (``trackers``)."""

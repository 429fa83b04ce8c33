"""The training loop: prompts → rollout (``rollout``) → scores (``gopd_lab.scorers``) → advantages and loss
(``update``, from ``gopd_lab.objectives``) → optimizer step; ``train`` runs it with run files, checkpoints and
evaluation. Also: model loading (``models``), the step's batch per method (``collect``), schedules, run
directories, trackers."""

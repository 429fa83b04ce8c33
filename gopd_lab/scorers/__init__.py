"""Stage 2, scoring: the token log-prob kernels (``logprobs``), mixed precision (``precision``), what a step's
teachers and references say about a rollout (``score``) and SDPO's self-teacher (``self_teacher``)."""

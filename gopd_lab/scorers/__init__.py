"""Stage 2, scoring: what a step's teachers and references say about a rollout (``score``), the lazy ``(N, V)``
targets formed chunk by chunk (``lazy_target``), the protocol a teacher that is not a model implements
(``scorer``), the HTTP client of a served teacher (``remote``), a teacher behind an OpenAI-compatible server such
as vLLM's (``openai_logprobs``) and SDPO's self-teacher (``self_teacher``). The log-prob kernels they run are
``gopd_lab.lm.logprobs``."""

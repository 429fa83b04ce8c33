"""Scale-out pieces: data parallelism and FSDP (``distributed``), the teacher as an HTTP server
(``teacher_server``, with its request checks in ``teacher_request``), vLLM rollouts (``vllm_rollout``), GPU memory
estimates (``gpu_memory``) and the Hugging Face Hub upload (``hub``). Vocabulary alignment is
``gopd_lab.lm.vocab``."""

"""Scale-out pieces: data parallelism and FSDP (``distributed``), the teacher as an HTTP server
(``teacher_server``, ``teacher_request``), vLLM rollouts, vocabulary alignment, GPU memory estimates and the
Hugging Face Hub upload (``hub``)."""

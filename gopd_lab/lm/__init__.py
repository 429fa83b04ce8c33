"""The language models a run holds and what is computed on them without gradients of the loop: loading a
checkpoint and its tokenizer (``models``), the rollout types and the sampling loop (``rollout``), the memory-lean
token log-prob kernels (``logprobs``), mixed precision (``precision``), vocabulary agreement (``vocab``), the G-OPD
target as a decodable model (``target``) and the exact tabular policies that behave like causal LMs (``exact``)."""

"""The embedded world: the character tokenizer, tiny Qwen2 models, the zoo of trained checkpoints and the exact
tabular oracles. The prompt sources themselves are ``gopd_lab.tasks``."""

"""gopd_lab: on-policy distillation workbench."""

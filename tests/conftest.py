import pytest
import torch

# Every model in the suite is tiny: one thread is as fast, and immune to oversubscription on a shared
# 2-core machine (where a second thread made tiny matmuls ~25x slower under load).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Three tiny random Qwen2 checkpoints on the character tokenizer: student, teacher, reference."""
    from gopd_lab.world.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {
        "student": str(save_tiny_model(root / "student", seed=0)),
        "teacher": str(save_tiny_model(root / "teacher", seed=1, hidden=48)),
        "reference": str(save_tiny_model(root / "reference", seed=2)),
    }

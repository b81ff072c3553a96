"""The test session's own guarantees (tests/conftest.py), checked so that they cannot silently lapse."""
import os

import torch


def test_tf32_is_off_in_every_test():
    # The defaults are cuDNN TF32 on; the autouse fixture turns both off (the flags exist on CPU builds).
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False


def test_triton_interpreter_is_selected_without_a_gpu():
    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1"

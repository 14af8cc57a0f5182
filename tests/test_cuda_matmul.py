"""--cuda_matmul: TF32 or full float32 matmuls on a GPU, through torch's CUDA-only setting."""

import pytest
import torch

from mac.cuda_matmul import CUDA_MATMUL_MODES, cuda_matmul, cuda_matmul_mode, set_cuda_matmul
from mac.train import parse_train_args


@pytest.fixture(autouse=True)
def _restore():
    saved = torch.backends.cuda.matmul.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision = saved


def test_modes_set_torchs_cuda_matmul_precision_only():
    cpu_before = torch.backends.mkldnn.matmul.fp32_precision
    set_cuda_matmul("tf32")
    assert torch.backends.cuda.matmul.fp32_precision == "tf32" and cuda_matmul() == "tf32"
    set_cuda_matmul("fp32")
    assert torch.backends.cuda.matmul.fp32_precision == "ieee" and cuda_matmul() == "fp32"
    assert torch.backends.mkldnn.matmul.fp32_precision == cpu_before     # CPU matmuls untouched


def test_block_restores_the_previous_setting_even_on_error():
    set_cuda_matmul("fp32")
    with pytest.raises(KeyError):
        with cuda_matmul_mode("tf32"):
            assert cuda_matmul() == "tf32"
            raise KeyError
    assert cuda_matmul() == "fp32"


def test_bad_mode_is_a_clear_error():
    with pytest.raises(ValueError, match=r"one of \['fp32', 'tf32'\], got 'tf16'"):
        set_cuda_matmul("tf16")


def test_train_flag_defaults_to_tf32_and_takes_fp32(capsys):
    assert parse_train_args([])[0].cuda_matmul == "tf32"
    assert parse_train_args(["--cuda_matmul", "fp32"])[0].cuda_matmul == "fp32"
    with pytest.raises(SystemExit):
        parse_train_args(["--cuda_matmul", "bf16"])
    assert "invalid choice" in capsys.readouterr().err
    assert set(CUDA_MATMUL_MODES) == {"tf32", "fp32"}


@pytest.mark.parametrize("device, flags, want", [("cuda", [], ["tf32"]), ("cuda", ["--cuda_matmul", "fp32"], ["fp32"]),
                                                 ("cpu", ["--cuda_matmul", "fp32"], [])])
def test_train_sets_the_mode_on_a_gpu_only(monkeypatch, tmp_path, device, flags, want):
    import mac.train as T
    calls = []
    monkeypatch.setattr(T, "resolve_device", lambda name, ctx=None: torch.device(device))
    monkeypatch.setattr(T, "set_cuda_matmul", calls.append)
    monkeypatch.setattr(T.DistContext, "start", lambda self, device, timeout: None)
    monkeypatch.setattr(T, "_train", lambda *a: tmp_path)      # stop before any work
    assert T.train(["--threads", "1", *flags]) == tmp_path
    assert calls == want

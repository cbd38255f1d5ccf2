import pytest
import torch

from ice_ignite.launcher import Launcher, default_backend, parse_devices


@pytest.mark.parametrize("spec, count", [("cpu", 1), ("cpu:0-1", 2), ("cpu:0,2-3", 3), ("CPU", 1)])
def test_cpu_devices(spec, count):
    assert parse_devices(spec) == [torch.device("cpu")] * count


def test_auto_is_cpu_without_cuda():
    if torch.cuda.is_available():
        assert parse_devices("auto")[0].type == "cuda"
    else:
        assert parse_devices("auto") == [torch.device("cpu")]


@pytest.mark.parametrize(
    "spec, error, words",
    [("tpu", ValueError, "kind must be"), ("cpu:a", ValueError, "not an index or a range"),
     ("cpu:3-1", ValueError, "runs backwards"), ("", TypeError, "devices must be a string"), (0, TypeError, "string")],
)
def test_bad_device_strings(spec, error, words):
    with pytest.raises(error, match=words):
        parse_devices(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_where_there_is_none_is_a_clear_error():
    with pytest.raises(RuntimeError, match="sees no CUDA device .* use devices='cpu'"):
        parse_devices("cuda:0")


def test_backend_follows_the_device():
    assert default_backend([torch.device("cpu")] * 2) == "gloo"
    assert default_backend([torch.device("cuda", 0), torch.device("cuda", 1)]) == "nccl"
    assert default_backend([torch.device("cuda", 0), torch.device("cuda", 0)]) == "gloo"
    with pytest.raises(ValueError, match="dist_backend must be"):
        default_backend([torch.device("cpu")], "tcp")


def test_launcher_defaults():
    launcher = Launcher()
    assert (launcher.rank, launcher.world_size, launcher.device, launcher.is_main) == (0, 1, torch.device("cpu"), True)

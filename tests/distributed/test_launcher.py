from pathlib import Path

import pytest
import torch
from conftest import linear_graph

import ice_ignite as ice
from ice_ignite.distributed.launcher import LaunchOptions, default_backend, launch, launch_config, parse_devices
from ice_ignite.distributed.launcher_record import Launcher


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
    [
        ("tpu", ValueError, "kind must be"),
        ("cpu:a", ValueError, "not an index or a range"),
        ("cpu:3-1", ValueError, "runs backwards"),
        ("", TypeError, "devices must be a string"),
        (0, TypeError, "string"),
    ],
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


# -- torchrun's options, passed through to torch's elastic agent ---------------------------------
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"redirects": "4"}, r"redirects='4': write torchrun's form, '0' \(nothing\)"),
        ({"tee": "0:3,x"}, "tee='0:3,x'"),
        ({"rdzv_configs": "timeout"}, "rdzv_configs='timeout': pass a dict"),
        ({"rdzv_configs": 5}, "rdzv_configs=5"),
        ({"monitor_interval": 0}, "monitor_interval must be a number of seconds > 0"),
        ({"omp_num_threads": 0}, "omp_num_threads must be None"),
        ({"standalone": True, "nnodes": 2}, "standalone=True runs on one machine"),
        ({"standalone": True, "rdzv_backend": "c10d", "rdzv_endpoint": "h:1"}, "drop standalone=True"),
    ],
)
def test_bad_launch_options(kwargs, words):
    with pytest.raises(ValueError, match=words):
        LaunchOptions(**kwargs)


def test_launch_options_reach_torchs_launch_config(tmp_path):
    options = LaunchOptions(
        monitor_interval=0.5,
        rdzv_configs="join_timeout=60,read_timeout=30",
        max_restarts=2,
        redirects="0:2",
        tee="3",
        standalone=True,
    )
    config = launch_config(2, options, "spawn", "exp", log_dir=tmp_path)
    assert (config.monitor_interval, config.max_restarts, config.nproc_per_node) == (0.5, 2, 2)
    assert config.rdzv_backend == "c10d" and config.rdzv_endpoint.startswith("127.0.0.1:")  # standalone
    assert config.rdzv_configs["join_timeout"] == "60" and config.rdzv_configs["read_timeout"] == "30"
    assert config.run_id.startswith("exp-")
    dest = config.logs_specs.reify({0: {}, 1: {}})  # where the agent sends each local rank's streams
    assert dest.stdouts[0].endswith("/0/stdout.log") and dest.stderrs[0].endswith("/0/stderr.log")
    assert dest.tee_stdouts[1].endswith("/1/stdout.log") and Path(dest.stdouts[0]).is_relative_to(tmp_path)


def test_a_static_rendezvous_gets_the_node_rank_and_the_users_configs():
    config = launch_config(1, LaunchOptions(nnodes="2", node_rank=1, master_port=29500, rdzv_configs={"x": 1}))
    assert config.rdzv_backend == "static" and config.rdzv_endpoint == "127.0.0.1:29500"
    assert config.rdzv_configs["rank"] == 1 and config.rdzv_configs["x"] == 1


def test_omp_num_threads_that_contradicts_the_environment_is_refused_before_any_worker_starts(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    started = []
    with pytest.raises(ValueError, match="omp_num_threads=2, but the environment sets OMP_NUM_THREADS=4"):
        launch(lambda: started.append(1), 2, LaunchOptions(omp_num_threads=2))
    assert not started


def test_launch_options_are_given_once(tmp_path):
    with pytest.raises(
        TypeError,
        match=r"the launch keywords \['max_restarts'\] too; pass the launch options in one "
        "place",
    ):
        linear_graph().run(
            [ice.Task(train=True, epochs=1, tags="train")],
            devices="cpu",
            out_dir=tmp_path,
            launch=ice.LaunchOptions(),
            max_restarts=2,
        )


def test_run_returns_the_run_directory_with_this_process_rank(tmp_path):
    run_dir = linear_graph().run(
        [ice.Task(train=True, epochs=1, tags="train")],
        devices="cpu",
        out_dir=tmp_path,
        run_id="exp",
        standalone=True,
        omp_num_threads=1,
    )  # one process: nothing to start
    assert run_dir == tmp_path / "exp" and isinstance(run_dir, Path)
    assert (run_dir.rank, run_dir.is_main, run_dir.launcher.world_size) == (0, True, 1)
    assert (run_dir / "ckpts").is_dir() and (run_dir / "ckpts").rank is None  # derived paths carry no launcher

"""`trainer.accelerator` / `devices` / `num_nodes` are checked against the machine before anything starts."""
from __future__ import annotations

import pytest

from lit_modules.devices import DeviceError, check_devices
from tests.helpers import ROOT

CPU_ONLY = dict(cuda_devices=0, cpu_cores=2, env={})


def test_more_gpus_than_exist_says_how_many_there_are():
    with pytest.raises(DeviceError, match=r"trainer.devices=8 but this machine has 2 CUDA GPUs.*trainer.devices=2"):
        check_devices({"accelerator": "auto", "devices": 8}, cuda_devices=2, cpu_cores=16, env={})
    with pytest.raises(DeviceError, match=r"GPU indices outside 0..1"):
        check_devices({"accelerator": "gpu", "devices": [0, 3]}, cuda_devices=2, cpu_cores=16, env={})
    check_devices({"accelerator": "gpu", "devices": 2}, cuda_devices=2, cpu_cores=16, env={})
    check_devices({"accelerator": "auto", "devices": "auto"}, cuda_devices=2, cpu_cores=16, env={})


def test_several_cpu_processes_need_an_explicit_cpu_accelerator():
    with pytest.raises(DeviceError, match=r"trainer.devices=8 but this machine has 0 CUDA GPUs and 2 CPU cores.*"
                                          r"trainer.accelerator=cpu explicitly"):
        check_devices({"accelerator": "auto", "devices": 8}, **CPU_ONLY)
    with pytest.raises(DeviceError, match="use at most 2"):
        check_devices({"accelerator": "cpu", "devices": 8}, **CPU_ONLY)
    check_devices({"accelerator": "cpu", "devices": 2}, **CPU_ONLY)
    check_devices({"accelerator": "auto", "devices": 1}, **CPU_ONLY)
    check_devices({"accelerator": "auto", "devices": "auto"}, **CPU_ONLY)  # auto on CPU = one process


def test_gpu_accelerator_without_gpu_and_bad_values():
    with pytest.raises(DeviceError, match="trainer.accelerator=gpu but this machine has 0 CUDA GPUs"):
        check_devices({"accelerator": "gpu", "devices": "auto"}, **CPU_ONLY)
    with pytest.raises(DeviceError, match="is not one of auto, gpu, cpu"):
        check_devices({"accelerator": "tpu", "devices": 1}, **CPU_ONLY)
    with pytest.raises(DeviceError, match="at least 1"):
        check_devices({"accelerator": "cpu", "devices": 0}, **CPU_ONLY)
    with pytest.raises(DeviceError, match="not a number"):
        check_devices({"accelerator": "cpu", "devices": "two"}, **CPU_ONLY)


def test_several_nodes_need_a_launcher():
    cfg = {"accelerator": "gpu", "devices": 8, "num_nodes": 4}
    with pytest.raises(DeviceError, match="needs a launcher"):
        check_devices(cfg, cuda_devices=8, cpu_cores=64, env={})
    with pytest.raises(DeviceError, match="WORLD_SIZE=16"):
        check_devices(cfg, cuda_devices=8, cpu_cores=64, env={"WORLD_SIZE": "16"})
    check_devices(cfg, cuda_devices=8, cpu_cores=64, env={"WORLD_SIZE": "32"})
    check_devices(cfg, cuda_devices=8, cpu_cores=64, env={"SLURM_NTASKS": "32"})


def test_run_py_refuses_impossible_devices_before_anything_starts(tmp_path):
    import os
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("the machine has a GPU")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "trainer.devices=8", f"hydra.run.dir={run_dir}",
                           f"paths.data_dir={tmp_path / 'data'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Error (DeviceError): trainer.devices=8 but this machine has 0 CUDA GPUs" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "data").exists() and not (run_dir / "checkpoints").exists()  # nothing was built


@pytest.mark.gpu
def test_run_py_refuses_more_gpus_than_exist(tmp_path):
    import os
    import subprocess
    import sys

    import torch

    n = torch.cuda.device_count()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "experiment=smoke", f"trainer.devices={n + 1}",
                           f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"trainer.devices={n + 1} but this machine has {n} CUDA GPU" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "data").exists()

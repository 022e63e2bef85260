"""Data parallelism: 4 forced CPU devices and 2 processes over loopback give the 1-device losses."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import serialization

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--task=binary_addition", "--model=lstm", "--seq_len=6", "--batch_size=16",
        "--num_steps=6", "--eval_every=3", "--eval_size=40"]


def _launch(workdir, *extra, devices=4, **popen):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen([sys.executable, "-m", "launch.main", *ARGS, f"--workdir={workdir}",
                           *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **popen)


def _finish(proc):
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  return out, err


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return np.array([[r.get("train_loss", np.nan), r["eval_loss"], r["eval_accuracy"]]
                   for r in rows])  # (step 0, the untrained model: no train_loss)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one")
  _finish(_launch(workdir, "--num_devices=1"))
  return workdir


@pytest.mark.slow
def test_four_devices_give_the_one_device_losses(one_device, tmp_path):
  _finish(_launch(tmp_path))
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  assert config["num_devices"] == 4 and config["num_processes"] == 1
  np.testing.assert_allclose(_losses(tmp_path), _losses(one_device), rtol=1e-5)


@pytest.mark.slow
def test_the_compiler_splits_the_batch_and_all_reduces_the_gradient():
  script = """
import jax
from seqjax import cells, parallel, tasks, train
mesh = parallel.make_mesh()
cfg = train.Config(cell=cells.lstm(8), task=tasks.get("adding", seq_len=5),
                   optimizer=train.make_optimizer(1e-3), batch_size=8, mesh=mesh)
state = parallel.put_replicated(mesh, train.init_state(cfg, jax.random.key(0)))
hlo = train.make_train_step(cfg, 0).lower(state).compile().as_text()
print(mesh.size, "all-reduce" in hlo)
"""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.stdout.split() == ["4", "True"], out.stderr[-2000:]


@pytest.mark.slow
def test_two_processes_over_loopback_give_the_one_device_losses(one_device, tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [_launch(tmp_path, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}", devices=1) for i in range(2)]
  outs = [_finish(p) for p in procs]
  assert "2 cpu device(s), 2 process(es)" in outs[0][0] and "step 6/6" in outs[0][0]
  assert "step" not in outs[1][0]  # only process 0 reports (and writes)
  np.testing.assert_allclose(_losses(tmp_path), _losses(one_device), rtol=1e-5)


def test_batch_must_divide_over_the_devices(tmp_path):
  proc = _launch(tmp_path / "run", "--batch_size=10", devices=4)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert "--batch_size=10: must be divisible by the number of devices, 4" in err
  assert not (tmp_path / "run").exists()


def _group_losses(workdir, seeds):
  return {s: _losses(os.path.join(workdir, f"s{s}")) for s in seeds}


@pytest.mark.slow
def test_a_group_on_four_devices_gives_the_one_device_losses(tmp_path):
  one = _launch(tmp_path / "one", "--seeds=0,1,2,3", "--num_devices=1")
  out_one, _ = _finish(one)
  runs = _launch(tmp_path / "runs", "--seeds=0,1,2,3")  # 4 runs on 4 devices: one run each
  out_runs, _ = _finish(runs)
  data = _launch(tmp_path / "data", "--seeds=0,1,2")  # 3 runs: each batch split over 4 devices
  out_data, _ = _finish(data)
  assert "4 cpu device(s), 1 process(es) | runs axis" in out_runs
  assert "4 cpu device(s), 1 process(es) | data axis" in out_data
  assert "1 cpu device(s)" in out_one
  reference = _group_losses(tmp_path / "one", range(4))
  for workdir, seeds in ((tmp_path / "runs", range(4)), (tmp_path / "data", range(3))):
    for seed, losses in _group_losses(workdir, seeds).items():
      np.testing.assert_allclose(losses, reference[seed], rtol=1e-5)


@pytest.mark.slow
def test_two_processes_stop_at_the_same_step_when_only_one_gets_sigterm(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  # two runs over two processes of one device each: the runs axis spans the processes
  procs = [_launch(tmp_path, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}", "--seeds=0,1",
                   "--num_steps=1000000", "--eval_every=1", devices=1) for i in range(2)]
  metrics = tmp_path / "s0" / "metrics.jsonl"
  deadline = time.time() + 200
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)  # the process that neither logs nor writes
  # had they stopped at different steps, one would wait forever in a collective
  outs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, outs[1][1][-2000:]
  stopped_at = int(outs[0][0].split("interrupted at step ")[1].split(":")[0])
  for seed in (0, 1):
    state = serialization.msgpack_restore((tmp_path / f"s{seed}" / "checkpoint.msgpack").read_bytes())
    assert int(state["step"]) == stopped_at

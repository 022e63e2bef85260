"""Training one run, or many runs as one program, in a workdir: resumable, checkpointed at every
evaluation, stopped cleanly by Ctrl-C or SIGTERM.

The launcher (`launch/main.py`) turns flags into `Settings` and calls `run`; nothing here reads
flags. Settings and their checks are in seqjax/settings.py, the files in seqjax/workdir.py.
"""

import math
import os
import signal
import threading
import time
from typing import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from seqjax import checkpoint, parallel, report, train
from seqjax.report import main_metric
from seqjax.settings import RunError, Settings, run_axis, train_config, validate
from seqjax.workdir import Folders, load, resumed_config

__all__ = ["Diverged", "RunError", "Settings", "Stopped", "load", "main_metric", "run", "validate"]


class Diverged(RunError):
  """Some runs of a group diverged (frozen at their last good checkpoint); the others finished."""


class Stopped(KeyboardInterrupt):
  """Stopped by a signal after checkpointing; the process should exit with `exit_code`."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.exit_code = 128 + signum


class _StopOnSignal:
  """SIGINT (Ctrl-C) or SIGTERM: finish the current step, checkpoint and stop. A second one:
  stop at once. With several processes they agree every step, so all stop at the same step."""

  def __init__(self):
    self.signum = 0

  def __enter__(self):
    # signal handlers can only be set from the main thread; elsewhere the defaults stay
    self._old = {}
    if threading.current_thread() is threading.main_thread():
      self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
    return self

  def _handle(self, signum, frame):
    if self.signum:
      raise KeyboardInterrupt
    self.signum = signum

  def agreed(self) -> int:
    """The signal some process got (0: none), the same answer in every process."""
    if jax.process_count() == 1:
      return self.signum
    from jax.experimental import multihost_utils
    return int(np.max(multihost_utils.process_allgather(np.int32(self.signum))))

  def __exit__(self, *exc):
    for s, old in self._old.items():
      signal.signal(s, old)


def _stacked(trees):
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _spread(values):
  """One run: its value; several: mean [min, max]."""
  return f"{values[0]:.4g}" if len(values) == 1 else \
      f"{np.mean(values):.4g} [{np.min(values):.4g}, {np.max(values):.4g}]"


def run(s: Settings, log: Callable[[str], None] = print, progress_secs: float = 10.0) -> dict:
  """Trains (or resumes) the run, or the group of runs, that `s` describes.

  Returns {run workdir: its metrics rows}. A single run whose loss turns non-finite stops with
  a RunError; in a group that run is frozen (its last good checkpoint kept, `diverged_at_step`
  in its metrics), the others go on, and a RunError naming it comes at the end.
  """
  s = s.resolved()
  recorded = resumed_config(s)
  s = s.with_learning_rate(recorded)
  task = validate(s)
  if s.learning_rate is not None and recorded.get("learning_rate") not in (None, s.learning_rate):
    log(f"--learning_rate={s.learning_rate:g}: {s.workdir} was trained at "
        f"{recorded['learning_rate']:g}; it goes on at {s.learning_rate:g} (Adam's state does "
        "not depend on the rate)")
  folders = Folders(s, lead=jax.process_index() == 0)
  runs, names, R = folders.runs, folders.names(), len(folders.runs)
  axis = run_axis(s)
  mesh = parallel.make_mesh(s.num_devices, axis)
  tcfg = train_config(s, task, mesh if axis == parallel.AXIS else None)
  placed = NamedSharding(mesh, P(parallel.RUNS)) if axis == parallel.RUNS else \
      parallel.replicated(mesh)
  fresh = train.GroupState(_stacked([train.init_state(tcfg, train.param_key(r.seed))
                                     for r in runs]), np.ones(R, bool))
  state, rows, diverged = folders.restore(fresh)
  step = int(np.max(state.runs.step))
  if step:
    log(f"resuming {s.workdir} from step {step}")
  folders.start(rows, num_devices=mesh.size, num_processes=jax.process_count(),
                jax_version=jax.__version__, backend=jax.default_backend())
  state = parallel.put(state, placed)
  seeds = parallel.put(np.array([r.seed for r in runs], np.int32), placed)
  size, shared = task.held_out_size or s.eval_size, task.held_out_size is not None
  held_out = parallel.put(
      task.held_out(train.eval_key(runs[0].seed), size) if shared else
      _stacked([task.held_out(train.eval_key(r.seed), size) for r in runs]),
      parallel.replicated(mesh) if shared else placed)
  one_at_a_time = train.runs_one_at_a_time(axis == parallel.RUNS)
  train_step = train.make_group_step(tcfg, R, placed, parallel.replicated(mesh), one_at_a_time)
  evaluate = train.make_group_evaluate(tcfg, R, shared, parallel.replicated(mesh), one_at_a_time)
  metric, live = main_metric(task), lambda: [i for i in range(R) if i not in diverged]
  wall_offset = [(report.evaluations(r) or [{"wall_time": 0.0}])[-1]["wall_time"] for r in rows]
  t_start = t_interval = t_print = time.time()
  losses, interval_steps, pending, signum = [[] for _ in runs], 0, None, 0
  frozen = len(diverged)  # runs the device knows are frozen

  def diverge(i, at_step, what):
    if not s.is_group:
      if not os.path.exists(checkpoint.path_in(s.workdir)):
        raise RunError(f"training diverged: {what} at step {at_step}; no checkpoint yet (one "
                       f"is written at each evaluation, every --eval_every={s.eval_every} steps); "
                       "the same command with a lower --learning_rate starts afresh")
      raise RunError(f"training diverged: {what} at step {at_step}; the last good checkpoint "
                     f"(in {s.workdir}) is kept; the same command with a lower --learning_rate "
                     "resumes from it")
    diverged[i] = at_step
    rows[i].append({"step": at_step, "diverged_at_step": at_step})
    log(f"{names[i]} diverged: {what} at step {at_step}; frozen at its last good checkpoint")

  def take_losses(metrics, at_step):
    loss, finite = np.asarray(metrics["loss"]), np.asarray(metrics["finite"])
    for i in live():
      if not math.isfinite(loss[i]):
        diverge(i, at_step, f"loss is {loss[i]}")
      elif not finite[i]:
        diverge(i, at_step, "the update is not finite")
      else:
        losses[i].append(loss[i])

  def evaluate_and_save():
    nonlocal t_interval, losses, interval_steps, state, frozen
    values = {k: np.asarray(v) for k, v in parallel.fetch(evaluate(state.runs.params,
                                                                    held_out)).items()}
    now = time.time()
    for i in live():
      if not math.isfinite(values["loss"][i]):
        diverge(i, step, f"evaluation loss is {values['loss'][i]}")
        continue
      row = {"step": step, "train_loss": float(np.mean(losses[i])) if losses[i] else math.nan,
             "eval_loss": float(values["loss"][i])}
      row.update({f"eval_{k}": float(v[i]) for k, v in values.items() if k != "loss"})
      if s.feedback == "scheduled":
        row["teacher_forcing"] = float(train.teacher_forcing(tcfg, step))
      row["examples_per_sec"] = interval_steps * s.batch_size / max(now - t_interval, 1e-9)
      row["wall_time"] = wall_offset[i] + now - t_start
      rows[i].append(row)
    if len(diverged) > frozen:  # diverged on the host (its evaluation): freeze it on the device
      state = state._replace(alive=parallel.put(np.array([i not in diverged for i in range(R)]),
                                                placed))
      frozen = len(diverged)
    folders.save(parallel.fetch(state), rows, diverged)
    t_interval, losses, interval_steps = now, [[] for _ in runs], 0
    return [rows[i][-1] for i in live()]

  log(f"{task.name} T={task.seq_len} | {tcfg.cell.name} H={s.hidden_size} x{s.num_layers} | "
      f"batch {s.batch_size} | {R} run(s) | {mesh.size} {jax.default_backend()} device(s), "
      f"{jax.process_count()} process(es) | {axis} axis | workdir {s.workdir}")
  with _StopOnSignal() as stop:
    while step < s.num_steps and live() and not (signum := stop.agreed()):
      state, metrics = train_step(state, seeds)
      step += 1
      interval_steps += 1
      if pending is not None:
        take_losses(pending, step - 1)  # one step late: the device is already on the next step
      pending = metrics
      if step % s.eval_every == 0 or step == s.num_steps:
        take_losses(pending, step)
        pending = None
        done = evaluate_and_save()
        if done:
          log(f"step {step}/{s.num_steps}  train_loss {_spread([r['train_loss'] for r in done])}"
              f"  eval_loss {_spread([r['eval_loss'] for r in done])}  eval_{metric} "
              f"{_spread([r.get('eval_' + metric, math.nan) for r in done])}  "
              f"{sum(r['examples_per_sec'] for r in done):.0f} ex/s")
        t_print = time.time()
      elif time.time() - t_print > progress_secs:
        rate = interval_steps / max(time.time() - t_interval, 1e-9)
        eta = (s.num_steps - step) / max(rate, 1e-9)
        latest = [losses[i][-1] for i in live() if losses[i]]
        log(f"step {step}/{s.num_steps}  " + (f"loss {_spread(latest)}  " if latest else "")
            + f"{rate:.1f} steps/s  ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        t_print = time.time()
    if signum and step < s.num_steps:
      if pending is not None:
        take_losses(pending, step)
      folders.save(parallel.fetch(state), rows, diverged)
      log(f"interrupted at step {step}: checkpoint saved in {s.workdir}; run the same command "
          "to resume")
      raise Stopped(signum)
  target = report.threshold(task.name, task.seq_len)
  folders.finish(rows, f"{tcfg.cell.name} on {task.name} (T={task.seq_len})", metric,
                 threshold=target[2] if target[0] == metric else None)
  if diverged:
    raise Diverged(f"{len(diverged)} of {R} runs diverged ("
                   + ", ".join(f"{names[i]} at step {k}" for i, k in sorted(diverged.items()))
                   + f"); the others finished; results in {s.workdir}")
  return {r.workdir: rows[i] for i, r in enumerate(runs)}

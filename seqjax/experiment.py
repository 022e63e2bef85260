"""Training one run, or many runs as one program, in a workdir: resumable, checkpointed at every
evaluation, stopped cleanly by Ctrl-C or SIGTERM.

The launcher (`launch/main.py`) turns flags into `Settings` and calls `run`; nothing here reads
flags. Settings and their checks are in seqjax/settings.py, the files in seqjax/workdir.py,
the writers (TensorBoard's, one's own) in seqjax/writers.py.
"""

import json
import math
import os
import signal
import threading
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from seqjax import checkpoint, parallel, report, train
from seqjax import writers as writers_lib
from seqjax.report import main_metric
from seqjax.settings import RunError, Settings, run_axis, train_config, validate
from seqjax.report import read_json
from seqjax.workdir import BEST, BEST_CHECKPOINT, Folders, load, provenance, resumed_config

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


def run(s: Settings, log: Callable[[str], None] = print, progress_secs: float = 10.0,
        writers: Sequence[Callable] = (), argv: Optional[Sequence[str]] = None) -> dict:
  """Trains (or resumes) the run, or the group of runs, that `s` describes.

  Returns {run workdir: its metrics rows}. A single run whose loss turns non-finite stops with
  a RunError; in a group that run is frozen (its last good checkpoint kept, `diverged_at_step`
  in its metrics), the others go on, and a RunError naming it comes at the end.

  writers: factories `make(run_folder)` of objects with `write(step, scalars)` and `close()`
  (seqjax/writers.py), fed every run's metrics.jsonl rows on process 0; `s.tensorboard` adds
  TensorBoard's. argv: the command line config.json records (default sys.argv).
  """
  s, task = _settings(s, log)
  lead = jax.process_index() == 0
  # a stream task's data (text: the corpus kind, bytes, SHA-256, vocabulary) is recorded too
  folders = Folders(s, lead=lead, metric=main_metric(task),
                    data=task.stream.info or {} if task.stream is not None else {})
  loop = _Loop(s, task, folders, log, provenance(argv))
  settings_of = {r.workdir: r.recorded() for r in folders.runs}
  tensorboard = [lambda folder: writers_lib.TensorBoard(
      folder, hparams=settings_of[folder],
      metrics=["eval_loss"] + ([f"eval_{loop.metric}"] if loop.metric != "loss" else []))] \
      if s.tensorboard and lead else []
  with writers_lib.Writers(list(writers) if lead else [], [r.workdir for r in folders.runs],
                           loop.rows, training=tensorboard) as out, _StopOnSignal() as stop:
    loop.out, signum = out, 0
    if loop.step == 0:
      loop.evaluate_and_save()  # the untrained model: the row of step 0
    while loop.step < s.num_steps and loop.live() and not (signum := stop.agreed()):
      loop.train()
      if loop.step % s.eval_every == 0 or loop.step == s.num_steps:
        loop.evaluate_and_save()
      elif _clock() - loop.t_print > progress_secs:
        loop.log_progress()
    if signum and loop.step < s.num_steps:
      loop.stop(signum)
    return loop.finish()


# The loop's clock (a test replaces it to see what each interval is timed over).
_clock = time.time


def _settings(s: Settings, log) -> tuple:
  """(settings with every default filled, task): the resumed run's learning rate and schedule
  horizon where none is given; all checked."""
  s = s.resolved()
  recorded = resumed_config(s)
  s = s.with_learning_rate(recorded).with_decay_steps(recorded)
  task = validate(s)
  if s.tensorboard:
    writers_lib.check_tensorboard()
  if s.learning_rate is not None and recorded.get("learning_rate") not in (None, s.learning_rate):
    log(f"--learning_rate={s.learning_rate:g}: {s.workdir} was trained at "
        f"{recorded['learning_rate']:g}; it goes on at {s.learning_rate:g} (its optimizer "
        "state is kept)")
  return s, task


class _Loop:
  """The moving parts of `run`'s loop, each step of it a method: `train` one step (its metrics
  read one step late, so the device never waits for the host), `evaluate_and_save`,
  `log_progress`, `stop` on a signal, `finish`. The train step and the evaluation are compiled
  and run once before the clock of the first interval starts, so no examples_per_sec includes
  compilation."""

  def __init__(self, s: Settings, task, folders: Folders, log, extra: dict):
    self.s, self.task, self.folders, self.log = s, task, folders, log
    runs, self.names, self.R = folders.runs, folders.names(), len(folders.runs)
    axis = run_axis(s)
    mesh = parallel.make_mesh(s.num_devices, axis)
    self.tcfg = tcfg = train_config(s, task, mesh if axis == parallel.AXIS else None)
    self.placed = placed = NamedSharding(mesh, P(parallel.RUNS)) if axis == parallel.RUNS else \
        parallel.replicated(mesh)
    fresh = train.GroupState(_stacked([train.init_state(tcfg, train.param_key(r.seed))
                                       for r in runs]), np.ones(R := self.R, bool))
    state, self.rows, self.diverged, running = folders.restore(fresh)
    self.step = int(np.max(state.runs.step))
    if self.step:
      log(f"resuming {s.workdir} from step {self.step}")
    folders.start(self.rows, step=self.step, num_devices=mesh.size,
                  num_processes=jax.process_count(), backend=jax.default_backend(), **extra)
    self.state = parallel.put(state, placed)
    self.seeds = parallel.put(np.array([r.seed for r in runs], np.int32), placed)
    size, shared = task.held_out_size or s.eval_size, task.held_out_size is not None
    self.held_out = parallel.put(
        task.held_out(train.eval_key(runs[0].seed), size) if shared else
        _stacked([task.held_out(train.eval_key(r.seed), size) for r in runs]),
        parallel.replicated(mesh) if shared else placed)
    log(f"{task.name} T={task.seq_len} | {tcfg.cell.name} H={s.hidden_size} x{s.num_layers} | "
        f"batch {s.batch_size} | {R} run(s) | {mesh.size} {jax.default_backend()} device(s), "
        f"{jax.process_count()} process(es) | {axis} axis | workdir {s.workdir}")
    self.wall_offset = [(report.evaluations(r) or [{"wall_time": 0.0}])[-1]["wall_time"]
                        for r in self.rows]
    self.t_start = _clock()  # wall_time counts compilation; examples_per_sec does not
    one_at_a_time = train.runs_one_at_a_time(axis == parallel.RUNS)
    # XLA:CPU generates part of a program's code at its first execution: run each program
    # once before the clock starts, the step on a copy of the state (it donates its input),
    # and drop the results
    if self.step < s.num_steps:
      self.train_step = train.make_group_step(tcfg, R, placed, parallel.replicated(mesh),
                                              one_at_a_time).lower(self.state, self.seeds).compile()
      copy = parallel.put(jax.tree.map(np.array, state), placed)  # new buffers: donated
      jax.block_until_ready(self.train_step(copy, self.seeds))
    if self.step < s.num_steps or self.step == 0:  # step 0 is evaluated even with no steps
      self.evaluate = train.make_group_evaluate(
          tcfg, R, shared, parallel.replicated(mesh), one_at_a_time).lower(
              self.state.runs.params, self.held_out).compile()
      jax.block_until_ready(self.evaluate(self.state.runs.params, self.held_out))
    self.t_interval = self.t_print = _clock()
    # the train losses since the last evaluation, per run: their sum (float64, in step order)
    # and count, checkpointed, so a resumed run's next row is the uninterrupted run's; the last
    # loss and gradient norm, for the progress line and the writers
    self.loss_sum = np.array(running.get("train_loss_sum", np.zeros(R)), np.float64)
    self.loss_count = np.array(running.get("train_loss_count", np.zeros(R)), np.int64)
    self.last_loss, self.grad_norm = [None] * R, [None] * R
    self.interval_steps, self.pending = 0, None
    self.frozen = len(self.diverged)  # runs the device knows are frozen
    self.saved_step = self.step  # the step of the last checkpoint
    self.metric, self.out = main_metric(task), None

  def live(self):
    return [i for i in range(self.R) if i not in self.diverged]

  def train(self):
    self.state, metrics = self.train_step(self.state, self.seeds)
    self.step += 1
    self.interval_steps += 1
    if self.pending is not None:
      self._take_losses(self.pending, self.step - 1)  # the device is already on the next step
    self.pending = metrics

  def _take_pending(self):
    if self.pending is not None:
      self._take_losses(self.pending, self.step)
      self.pending = None

  def _take_losses(self, metrics, at_step):
    loss, finite = np.asarray(metrics["loss"]), np.asarray(metrics["finite"])
    for i in self.live():
      if not math.isfinite(loss[i]):
        self._diverge(i, at_step, f"loss is {loss[i]}")
      elif not finite[i]:
        self._diverge(i, at_step, "the update is not finite")
      else:
        self.loss_sum[i] += float(loss[i])
        self.loss_count[i] += 1
        self.last_loss[i] = float(loss[i])
        self.grad_norm[i] = float(metrics["grad_norm"][i])

  def _diverge(self, i, at_step, what):
    s = self.s
    if not s.is_group:
      if not os.path.exists(checkpoint.path_in(s.workdir)):  # the untrained model's evaluation
        raise RunError(f"training diverged: {what} at step {at_step}, the untrained model; no "
                       "checkpoint was written")
      raise RunError(f"training diverged: {what} at step {at_step}; the last good checkpoint "
                     f"(step {self.saved_step}, in {s.workdir}) is kept; the same command with a "
                     "lower --learning_rate resumes from it")
    self.diverged[i] = at_step
    self.rows[i].append({"step": at_step, "diverged_at_step": at_step})
    self.log(f"{self.names[i]} diverged: {what} at step {at_step}; frozen at its last good "
             "checkpoint")

  def evaluate_and_save(self):
    self._take_pending()
    now = self._evaluate()
    self.loss_sum[:], self.loss_count[:] = 0.0, 0
    self._save()
    self.t_interval, self.interval_steps = now, 0
    done = [self.rows[i][-1] for i in self.live()]
    if done:
      metric = self.metric
      trained = self.step > 0  # step 0's row has no train_loss nor speed
      speed = sum(r["examples_per_sec"] for r in done) if trained else 0.0
      self.log(f"step {self.step}/{self.s.num_steps}  "
               + (f"train_loss {_spread([r['train_loss'] for r in done])}  " if trained else "")
               + f"eval_loss {_spread([r['eval_loss'] for r in done])}  eval_{metric} "
               f"{_spread([r.get('eval_' + metric, math.nan) for r in done])}"
               + (f"  {speed:.0f} ex/s" + self._tokens(speed) if trained else ""))
    self.t_print = _clock()

  def _evaluate(self) -> float:
    """Appends each live run's evaluation row (or marks it diverged); returns the time it
    ended, which closes the interval."""
    s, step = self.s, self.step
    values = {k: np.asarray(v) for k, v in parallel.fetch(
        self.evaluate(self.state.runs.params, self.held_out)).items()}
    now = _clock()
    for i in self.live():
      if not math.isfinite(values["loss"][i]):
        self._diverge(i, step, f"evaluation loss is {values['loss'][i]}")
        continue
      row = {"step": step}
      if step:  # step 0: the untrained model, only its evaluation
        count = self.loss_count[i]
        row["train_loss"] = float(self.loss_sum[i] / count) if count else math.nan
      row["eval_loss"] = float(values["loss"][i])
      row.update({f"eval_{k}": float(v[i]) for k, v in values.items() if k != "loss"})
      if s.task_options.get("feedback") == "scheduled" and step:
        row["teacher_forcing"] = float(train.teacher_forcing(self.tcfg, step))
      if step:
        row["examples_per_sec"] = self.interval_steps * s.batch_size / max(
            now - self.t_interval, 1e-9)
      row["wall_time"] = self.wall_offset[i] + now - self.t_start
      self.rows[i].append(row)
    return now

  def _save(self):
    """Checkpoints (the last and any new best), metrics.jsonl, then the writers get the new rows.
    A run that diverged on the host (its evaluation) is first frozen on the device."""
    if len(self.diverged) > self.frozen:
      alive = np.array([i not in self.diverged for i in range(self.R)])
      self.state = self.state._replace(alive=parallel.put(alive, self.placed))
      self.frozen = len(self.diverged)
    self.folders.save(parallel.fetch(self.state), self.rows, self.diverged,
                      {"train_loss_sum": self.loss_sum, "train_loss_count": self.loss_count})
    self.saved_step = self.step
    self.out.send(self.rows, self._training_scalars())

  def _training_scalars(self):
    """Per run, {step: the learning rate of the next update (the run's rate times the
    schedule), and the global gradient norm of the last step, before clipping}."""
    multiplier = train.lr_multiplier(self.s.lr_schedule, self.s.warmup_steps, self.s.decay_steps)
    scale = 1.0 if multiplier is None else float(multiplier(self.step))
    out = []
    for i, run in enumerate(self.folders.runs):
      scalars = {"learning_rate": run.learning_rate * scale}
      if self.grad_norm[i] is not None:
        scalars["grad_norm"] = self.grad_norm[i]
      out.append({self.step: scalars})
    return out

  def log_progress(self):
    now = _clock()
    rate = self.interval_steps / max(now - self.t_interval, 1e-9)
    eta = (self.s.num_steps - self.step) / max(rate, 1e-9)
    latest = [self.last_loss[i] for i in self.live() if self.last_loss[i] is not None]
    self.log(f"step {self.step}/{self.s.num_steps}  "
             + (f"loss {_spread(latest)}  " if latest else "")
             + f"{rate:.1f} steps/s" + self._tokens(rate * self.s.batch_size * len(self.live()))
             + f"  ETA {int(eta // 60)}m{int(eta % 60):02d}s")
    self.t_print = _clock()

  def _tokens(self, examples_per_sec) -> str:
    """A stream task's (text's) speed in tokens per second, for the progress line."""
    if self.task.stream is None:
      return ""
    return f"  {examples_per_sec * self.task.seq_len:.0f} tokens/s"

  def stop(self, signum):
    self._take_pending()
    self._save()
    self.log(f"interrupted at step {self.step}: checkpoint saved in {self.s.workdir}; run the "
             "same command to resume")
    raise Stopped(signum)

  def _test_best(self):
    """A stream task (text): each run's best checkpoint evaluated once on the test part, into
    its best.json (test_<metric> for every metric), not into metrics.jsonl."""
    fresh = train.init_state(self.tcfg, train.param_key(self.folders.runs[0].seed))
    tokens = self.task.stream.split("test")
    evaluate = train.make_evaluate(self.tcfg)
    for run in self.folders.runs:
      path, best = (os.path.join(run.workdir, name) for name in (BEST_CHECKPOINT, BEST))
      if not (os.path.exists(path) and os.path.exists(best)):
        continue
      params = checkpoint.restore(path, fresh).params
      values = {f"test_{k}": float(v) for k, v in evaluate(params, tokens).items()}
      record = read_json(best)
      if self.folders.lead:
        checkpoint.write_atomic(best, json.dumps(dict(record, **values), indent=2) + "\n")
      self.log(f"{run.workdir}: best checkpoint (step {record['step']}) on the test "
               f"part: {values['test_' + self.metric]:.4f} {self.metric}")

  def finish(self) -> dict:
    task, s = self.task, self.s
    if task.stream is not None:
      self._test_best()
    target = report.threshold(task.name, task.seq_len)
    self.folders.finish(self.rows, f"{self.tcfg.cell.name} on {task.name} (T={task.seq_len})",
                        self.metric, threshold=target[2] if target[0] == self.metric else None)
    if self.diverged:
      raise Diverged(f"{len(self.diverged)} of {self.R} runs diverged ("
                     + ", ".join(f"{self.names[i]} at step {k}"
                                 for i, k in sorted(self.diverged.items()))
                     + f"); the others finished; results in {s.workdir}")
    return {r.workdir: self.rows[i] for i, r in enumerate(self.folders.runs)}

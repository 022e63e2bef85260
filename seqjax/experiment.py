"""One training run in a workdir: config.json, metrics.jsonl, checkpoint, curves.png; resumable.

The launcher (`launch/main.py`) turns flags into a `RunConfig` and calls `run`; nothing here
reads flags. Errors a user can cause are `RunError`s with one-line messages.
"""

import dataclasses
import json
import math
import os
import signal
import threading
import time
from typing import Callable, Optional

import jax
import numpy as np

from seqjax import cells, checkpoint, parallel, plots, tasks, train
from seqjax.scanning import default_unroll


class RunError(Exception):
  """A user-facing error: bad setting, unusable workdir or checkpoint, diverged training."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
  model: str = "rwa"
  task: str = "adding"
  seq_len: Optional[int] = None        # None: the task's default
  bit_order: str = "lsb_first"
  hidden_size: Optional[int] = None    # None: the task's default
  num_layers: int = 1
  batch_size: Optional[int] = None
  num_steps: Optional[int] = None
  learning_rate: Optional[float] = None
  clip_norm: float = 0.0               # 0: no clipping (the paper's setting)
  seed: int = 0
  eval_every: int = 100
  eval_size: int = 1000                # held-out examples for synthetic tasks
  permute: bool = False
  data_dir: Optional[str] = None
  prefix_len: int = 3
  feedback: str = "teacher"
  teacher_forcing_decay_steps: int = 10000
  unroll: Optional[int] = None         # default: seqjax.scan's measured best for the backend
  remat: bool = False
  dtype: str = "float32"               # matmul operands; "bfloat16": mixed, float32 params/state
  num_devices: Optional[int] = None    # devices per process for data parallelism; None: all
  workdir: str = "runs/default"

  def resolved(self) -> "RunConfig":
    """Fills the per-task defaults (the paper's settings, or the binary-addition article's)."""
    if self.task not in tasks.NAMES:
      raise RunError(f"--task={self.task}: allowed: {', '.join(tasks.NAMES)}")
    defaults = tasks.DEFAULTS[self.task]
    fill = {k: defaults[k] for k in ("seq_len", "hidden_size", "batch_size", "num_steps",
                                     "learning_rate") if getattr(self, k) is None}
    if self.unroll is None:
      fill["unroll"] = default_unroll()
    return dataclasses.replace(self, **fill)


# Settings a resumed run may change; any other difference means a different experiment.
# (learning_rate: Adam's state does not depend on it, so a diverged run can go on more gently.)
RESUMABLE_CHANGES = ("num_steps", "eval_every", "workdir", "data_dir", "learning_rate",
                     "num_devices", "unroll", "remat")  # unroll, remat: speed and memory only


def _check(ok, flag, value, allowed):
  if not ok:
    raise RunError(f"--{flag}={value}: {allowed}")


DTYPES = {"float32": None, "bfloat16": "bfloat16"}  # --dtype -> the cells' matmul dtype


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def validate(cfg: RunConfig) -> tasks.Task:
  """Checks every setting before any work; returns the task (which also checks its data)."""
  _check(cfg.model in cells.NAMES, "model", cfg.model, f"allowed: {', '.join(cells.NAMES)}")
  _check(cfg.dtype in DTYPES, "dtype", cfg.dtype, f"allowed: {', '.join(DTYPES)}")
  for flag in ("hidden_size", "num_layers", "batch_size", "eval_every", "eval_size", "unroll",
               "prefix_len", "teacher_forcing_decay_steps"):
    value = getattr(cfg, flag)
    _check(_is_int(value) and value >= 1, flag, value, "must be an integer >= 1")
  _check(_is_int(cfg.num_steps) and cfg.num_steps >= 0, "num_steps", cfg.num_steps,
         "must be an integer >= 0")
  _check(_is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "must be an integer >= 0")
  _check(isinstance(cfg.learning_rate, (int, float)) and math.isfinite(cfg.learning_rate)
         and cfg.learning_rate > 0, "learning_rate", cfg.learning_rate, "must be a number > 0")
  _check(math.isfinite(cfg.clip_norm) and cfg.clip_norm >= 0, "clip_norm", cfg.clip_norm,
         "must be >= 0 (0 turns clipping off)")
  fixed = tasks.DEFAULTS[cfg.task]["seq_len"]
  _check(tasks.takes_seq_len(cfg.task) or cfg.seq_len == fixed, "seq_len", cfg.seq_len,
         f"the {cfg.task} task has a fixed length {fixed}")
  try:
    task = tasks.get(cfg.task, seq_len=cfg.seq_len, bit_order=cfg.bit_order,
                     permute=cfg.permute, data_dir=cfg.data_dir)
  except ValueError as e:
    raise RunError(str(e)) from None
  _check(cfg.feedback in train.FEEDBACK_MODES, "feedback", cfg.feedback,
         f"allowed: {', '.join(train.FEEDBACK_MODES)}")
  _check(cfg.feedback == "teacher" or task.feedback_channel is not None, "feedback", cfg.feedback,
         f"only the series tasks ({', '.join(tasks.SERIES)}) feed outputs back; {cfg.task} takes "
         "--feedback=teacher")
  _check(cfg.num_devices is None or (_is_int(cfg.num_devices) and
                                     1 <= cfg.num_devices <= jax.local_device_count()),
         "num_devices", cfg.num_devices,
         f"must be in [1, {jax.local_device_count()}] (the local devices)")
  devices = (cfg.num_devices or jax.local_device_count()) * jax.process_count()
  _check(cfg.batch_size % devices == 0, "batch_size", cfg.batch_size,
         f"must be divisible by the number of devices, {devices} (see --num_devices)")
  if task.feedback_channel is not None:
    _check(cfg.prefix_len < task.seq_len, "prefix_len", cfg.prefix_len,
           f"must be below the sequence length {task.seq_len}")
  return task



class _StopOnSignal:
  """First Ctrl-C: finish the current step, checkpoint and stop. Second: stop at once."""

  def __init__(self):
    self.requested = False

  def __enter__(self):
    # signal handlers can only be set from the main thread; elsewhere Ctrl-C keeps its default
    self._old = None
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGINT, self._old)


def _read_jsonl(path):
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          raise RunError(f"{path} line {n} is not JSON; move the file away to continue") from None
  return rows


def _write_jsonl(path, rows):
  checkpoint.write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def main_metric(task: tasks.Task) -> str:
  return {"copy": "bits_per_step"}.get(task.name, "accuracy" if task.classification else "mse")


def train_config(cfg: RunConfig, task: tasks.Task, mesh=None) -> train.Config:
  cell = cells.get(cfg.model, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                   dtype=DTYPES[cfg.dtype])
  return train.Config(cell=cell, task=task, mesh=mesh,
                      optimizer=train.make_optimizer(cfg.learning_rate, cfg.clip_norm or None),
                      batch_size=cfg.batch_size, unroll=cfg.unroll, remat=cfg.remat,
                      prefix_len=cfg.prefix_len, feedback=cfg.feedback,
                      teacher_forcing_decay_steps=cfg.teacher_forcing_decay_steps)


def load(workdir: str):
  """(RunConfig, train.Config, params) of the run checkpointed in `workdir`."""
  config_path, ckpt_path = os.path.join(workdir, "config.json"), checkpoint.path_in(workdir)
  for path in (config_path, ckpt_path):
    if not os.path.exists(path):
      raise RunError(f"--workdir={workdir}: no {os.path.basename(path)} (not a trained run)")
  try:
    with open(config_path) as f:
      saved = json.load(f)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig(**{k: v for k, v in saved.items() if k in fields})
  except (OSError, json.JSONDecodeError, TypeError) as e:
    raise RunError(f"{config_path} is unreadable ({e})") from None
  tcfg = train_config(cfg, validate(cfg))
  state = checkpoint.restore(ckpt_path, train.init_state(tcfg, train.param_key(cfg.seed)))
  return cfg, tcfg, state.params


def run(cfg: RunConfig, log: Callable[[str], None] = print, progress_secs: float = 10.0):
  """Trains (or resumes) the run described by cfg; returns the metrics rows of the workdir."""
  cfg = cfg.resolved()
  task = validate(cfg)
  workdir = cfg.workdir
  config_path = os.path.join(workdir, "config.json")
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  ckpt_path = checkpoint.path_in(workdir)

  if os.path.exists(config_path):
    try:
      with open(config_path) as f:
        previous = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise RunError(f"{config_path} is unreadable ({e}); move it away to continue") from None
    for key, value in dataclasses.asdict(cfg).items():
      if key not in RESUMABLE_CHANGES and key in previous and previous[key] != value:
        raise RunError(f"--{key}={value}: {workdir} holds a run with --{key}={previous[key]}; "
                       "use another --workdir")

  mesh = parallel.make_mesh(cfg.num_devices)
  lead = jax.process_index() == 0  # one process writes files
  tcfg = train_config(cfg, task, mesh)
  cell = tcfg.cell
  state = train.init_state(tcfg, train.param_key(cfg.seed))
  rows = []
  if os.path.exists(ckpt_path):
    state = checkpoint.restore(ckpt_path, state)
    rows = [r for r in _read_jsonl(metrics_path) if r["step"] <= int(state.step)]
    log(f"resuming {workdir} from step {int(state.step)}")
  state = parallel.put_replicated(mesh, state)

  if lead:
    os.makedirs(workdir, exist_ok=True)
    checkpoint.write_atomic(config_path, json.dumps(
        dict(dataclasses.asdict(cfg), num_devices=mesh.size, num_processes=jax.process_count(),
             jax_version=jax.__version__, backend=jax.default_backend()), indent=2) + "\n")
    _write_jsonl(metrics_path, rows)  # drops evaluations newer than the checkpoint

  train_step = train.make_train_step(tcfg, cfg.seed)
  evaluate = train.make_evaluate(tcfg)
  held_out = parallel.put_replicated(
      mesh, task.held_out(train.eval_key(cfg.seed), task.held_out_size or cfg.eval_size))
  metric = main_metric(task)
  step = int(state.step)
  wall_offset = rows[-1]["wall_time"] if rows else 0.0
  t_start = t_interval = t_print = time.time()
  interval_losses, interval_steps = [], 0
  pending = None

  def check_finite(metrics, at_step):
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
      raise RunError(f"training diverged: loss is {loss} at step {at_step}; the last good "
                     f"checkpoint ({ckpt_path}) is kept; the same command with a lower "
                     f"--learning_rate resumes from it")
    interval_losses.append(loss)

  def evaluate_and_save():
    nonlocal t_interval, interval_losses, interval_steps
    values = {k: float(v) for k, v in evaluate(state.params, held_out).items()}
    if not math.isfinite(values["loss"]):
      raise RunError(f"evaluation loss is {values['loss']} at step {step}; the last good "
                     f"checkpoint ({ckpt_path}) is kept")
    now = time.time()
    row = {"step": step,
           "train_loss": float(np.mean(interval_losses)) if interval_losses else math.nan,
           "eval_loss": values.pop("loss")}
    row.update({f"eval_{k}": v for k, v in values.items()})
    if cfg.feedback == "scheduled":
      row["teacher_forcing"] = float(train.teacher_forcing(tcfg, step))
    row["examples_per_sec"] = interval_steps * cfg.batch_size / max(now - t_interval, 1e-9)
    row["wall_time"] = wall_offset + now - t_start
    rows.append(row)
    if lead:
      _write_jsonl(metrics_path, rows)
      checkpoint.save(ckpt_path, state)
    t_interval, interval_losses, interval_steps = now, [], 0
    return row

  log(f"{task.name} T={task.seq_len} | {cell.name} H={cfg.hidden_size} x{cfg.num_layers} | "
      f"batch {cfg.batch_size} | {mesh.size} {jax.default_backend()} device(s), "
      f"{jax.process_count()} process(es) | workdir {workdir}")
  with _StopOnSignal() as stop:
    while step < cfg.num_steps and not stop.requested:
      state, metrics = train_step(state)
      step += 1
      interval_steps += 1
      if pending is not None:
        check_finite(pending, step - 1)  # one step late: the device is already on the next step
      pending = metrics
      if step % cfg.eval_every == 0 or step == cfg.num_steps:
        check_finite(pending, step)
        pending = None
        row = evaluate_and_save()
        log(f"step {step}/{cfg.num_steps}  train_loss {row['train_loss']:.4g}  eval_loss "
            f"{row['eval_loss']:.4g}  eval_{metric} {row.get('eval_' + metric, math.nan):.4g}  "
            f"{row['examples_per_sec']:.0f} ex/s")
        t_print = time.time()
      elif time.time() - t_print > progress_secs:
        rate = interval_steps / max(time.time() - t_interval, 1e-9)
        eta = (cfg.num_steps - step) / max(rate, 1e-9)
        log(f"step {step}/{cfg.num_steps}  loss {interval_losses[-1] if interval_losses else math.nan:.4g}"
            f"  {rate:.1f} steps/s  ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        t_print = time.time()
    if stop.requested and step < cfg.num_steps:
      if pending is not None:
        check_finite(pending, step)
      if lead:
        checkpoint.save(ckpt_path, state)
      log(f"interrupted at step {step}: checkpoint saved in {workdir}; run the same command "
          "to resume")
  if lead and not stop.requested and rows:
    plots.learning_curves(rows, os.path.join(workdir, "curves.png"),
                          f"{cell.name} on {task.name} (T={task.seq_len})", metric)
  if stop.requested and step < cfg.num_steps:
    raise KeyboardInterrupt
  return rows

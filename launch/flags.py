"""The flags of launch.main and launch.compare (flags live only in launch/), built from the fields
of `seqjax.settings.Settings` and the options the built-in tasks declare (`tasks.BUILTIN_OPTIONS`),
so every default, help text and list of allowed values is written once, there."""

import sys

from absl import flags

from seqjax import tasks
from seqjax.settings import FIELDS, RunError, Settings, check, check_int

_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
           bool: flags.DEFINE_boolean, "ints": flags.DEFINE_list, "floats": flags.DEFINE_list}
HOLDERS = {}  # setting name -> its FlagHolder
TASK_HOLDERS = {}  # task option name -> its FlagHolder (default None: not given)


def option_flag(name: str) -> tuple:
  """(kind, allowed values or None, help) of the flag of task option `name`: one flag for every
  built-in task declaring it (they must agree on its kind)."""
  declared = tasks.BUILTIN_OPTIONS[name]
  kinds = {o.kind for o in declared.values()}
  if len(kinds) > 1:
    raise TypeError(f"the tasks {', '.join(declared)} declare option {name} with different kinds")
  choices = tuple(dict.fromkeys(c for o in declared.values() for c in o.choices or ()))
  defaults = {task: o.default for task, o in declared.items()}
  shown = next(iter(defaults.values())) if len(set(map(repr, defaults.values()))) == 1 else \
      ", ".join(f"{v} ({task})" for task, v in defaults.items())
  shown = "" if shown is None else f" Default: {shown}."
  helps = {}  # tasks declaring it with different help texts: each text with its tasks
  for task, o in declared.items():
    helps.setdefault(o.help, []).append(task)
  text = next(iter(helps)) if len(helps) == 1 else \
      " ".join(f"{', '.join(ts)}: {h}" for h, ts in helps.items())
  help = f"{text}{shown} Only for: {', '.join(declared)}."
  return kinds.pop(), choices or None, help


def define_settings(skip=()) -> None:
  """One flag per setting and per option a built-in task declares (an enum where there are
  allowed values); `skip`: those a program takes in another form (launch.compare: lists of
  models, layers, ...)."""
  for name, field in FIELDS.items():
    if name in skip or name == "task_options":
      continue
    meta = field.metadata
    if meta["choices"] is not None:
      HOLDERS[name] = flags.DEFINE_enum(name, field.default, list(meta["choices"]), meta["help"])
    else:
      HOLDERS[name] = _DEFINE[meta["kind"]](name, field.default, meta["help"])
  for name in tasks.BUILTIN_OPTIONS:
    if name in skip:
      continue
    kind, choices, help = option_flag(name)
    TASK_HOLDERS[name] = flags.DEFINE_enum(name, None, list(choices), help) if choices else \
        _DEFINE[kind](name, None, help)


def parse_list(flag: str, values, kind=str, choices=None, minimum=None) -> tuple:
  """A list flag's values as `kind`, each checked; one error line naming the flag otherwise."""
  shown = ",".join(values)
  try:
    out = tuple(kind(v) for v in values)
  except ValueError:
    raise RunError(f"--{flag}={shown}: a comma-separated list of "
                   f"{ {int: 'integers', float: 'numbers'}.get(kind, 'values') }") from None
  check(len(out) > 0, flag, shown, "give at least one value")
  for v in out:
    if choices is not None:
      check(v in choices, flag, shown, f"{v!r} is not one of {', '.join(choices)}")
    if minimum is not None:
      check_int(flag, v, minimum, shown)
  return out


def settings() -> Settings:
  """The Settings of the flags (list flags parsed), task defaults filled."""
  values = {}
  for name, holder in HOLDERS.items():
    value = holder.value
    kind = FIELDS[name].metadata["kind"]
    if kind in ("ints", "floats") and value is not None:
      value = parse_list(name, value, int if kind == "ints" else float)
    values[name] = value
  # a task option given is refused for a task that does not take it, even at its default value
  options = {name: h.value for name, h in TASK_HOLDERS.items() if h.value is not None}
  return Settings(task_options=options, **values).resolved()


DISTRIBUTED = flags.DEFINE_boolean("distributed", False,
                                   "Call jax.distributed.initialize() first (multi-host runs).")
COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                  "--distributed: host:port of process 0 (default: from the "
                                  "cluster environment, e.g. SLURM).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--distributed: process count.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "--distributed: this process's index.")


def initialize_distributed():
  """jax.distributed.initialize() when --distributed (before any other JAX work)."""
  if DISTRIBUTED.value:
    import jax
    jax.distributed.initialize(coordinator_address=COORDINATOR.value,
                               num_processes=NUM_PROCESSES.value, process_id=PROCESS_ID.value)


def log(line: str) -> None:
  """Prints on process 0 only."""
  import jax
  if jax.process_index() == 0:
    print(line, flush=True)


def run_or_exit(argv, body):
  """Runs body() after --distributed set-up. A user-facing error ends the process with one line
  and exit code 1; Ctrl-C or SIGTERM with 128 + the signal (after the run has saved its
  checkpoint)."""
  from seqjax import checkpoint, experiment
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; all settings are --flags (see --help)")
  try:
    initialize_distributed()
    body()
  except (experiment.RunError, checkpoint.CheckpointError) as e:
    sys.exit(f"error: {e}")
  except experiment.Stopped as e:
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    sys.exit(130)

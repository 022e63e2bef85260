"""Tasks own their options: each task module's OPTIONS, the launcher's flags and docs table built
from them, a task of yours taking built-in options or declaring its own, and config.json keeping
each option under its own name (so runs recorded before still resume)."""

import json
import os
import sys
import textwrap

import pytest
from absl import flags
from absl.testing import flagsaver

from launch import main as launch_main
from seqjax import experiment, tasks, workdir
from seqjax.settings import FIELDS, Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
if not FLAGS.is_parsed():
  FLAGS(["launch.main"])

TINY = dict(model="lstm", hidden_size=4, batch_size=8, num_steps=2, eval_every=2, eval_size=8)
KINDS = {int: "integer", float: "number", str: "string", bool: "boolean"}

MINE = '''
import jax, jax.numpy as jnp
from seqjax import tasks
from seqjax.tasks.base import accuracy, softmax_cross_entropy

DEFAULTS = dict(seq_len=4, hidden_size=4, batch_size=8, num_steps=2, learning_rate=0.01)
OPTIONS = (tasks.Option("width", int, 1, "Input channels.", minimum=1),)
SEEN = []

def _task(seq_len, bit_order, width):
  """Is the first bit 1? (width copies of each bit per step)"""
  def sample(key, batch_size):
    bits = jax.random.bernoulli(key, 0.5, (batch_size, seq_len)).astype(jnp.int32)
    bits = bits[:, ::-1] if bit_order == "msb_first" else bits
    xs = jnp.repeat(bits[..., None].astype(jnp.float32), width, axis=-1)
    return tasks.Batch(xs=xs, ys=bits[:, 0], lengths=None)
  def losses(logits, batch):
    return {"loss": softmax_cross_entropy(logits, batch.ys), "accuracy": accuracy(logits, batch.ys)}
  return tasks.Task("ordered", width, 2, False, True, sample, sample, losses, seq_len)

def ordered(seq_len, bit_order):  # bit_order: a built-in's option, taken by name
  SEEN.append(bit_order)
  return _task(seq_len, bit_order, 1)

def wide(seq_len, width):
  if width > 3:
    raise tasks.OptionError("width", width, "must be <= 3")
  return _task(seq_len, "lsb_first", width)
'''

NOT_OPTIONS = '''
from optmine import ordered
OPTIONS = ("depth",)
'''


@pytest.fixture(scope="module")
def user_modules(tmp_path_factory):
  folder = tmp_path_factory.mktemp("option_modules")
  for name, text in (("optmine", MINE), ("optbad", NOT_OPTIONS)):
    (folder / f"{name}.py").write_text(textwrap.dedent(text))
  sys.path.insert(0, str(folder))
  yield folder
  sys.path.remove(str(folder))
  for name in ("optmine", "optbad"):
    sys.modules.pop(name, None)


def _main(**overrides):
  with flagsaver.flagsaver(**{**TINY, **overrides}):
    launch_main.main(["launch.main"])


def _refused(tmp_path, **overrides) -> str:
  folder = tmp_path / "run"
  with pytest.raises(SystemExit) as e:
    _main(workdir=str(folder), **overrides)
  text = str(e.value.code)
  assert text.startswith("error: ") and "\n" not in text and not folder.exists(), text
  return text[len("error: "):]


def option_table() -> str:
  """The docs' table of task-option flags as the built-in tasks' declarations give it."""
  rows = ["| flag | only for | default | allowed |", "|---|---|---|---|"]
  for name, declared in tasks.BUILTIN_OPTIONS.items():
    first = next(iter(declared.values()))
    defaults = {t: "—" if o.default is None else f"`{o.default}`" for t, o in declared.items()}
    shown = next(iter(defaults.values())) if len(set(defaults.values())) == 1 else \
        ", ".join(f"{v} ({t})" for t, v in defaults.items())
    choices = tuple(dict.fromkeys(c for o in declared.values() for c in o.choices or ()))
    allowed = ", ".join(f"`{c}`" for c in choices) if choices else KINDS[first.kind] + (
        "" if first.minimum is None else f" ≥ {first.minimum}")
    rows.append(f"| `--{name}` | {', '.join(declared)} | {shown} | {allowed} |")
  return "\n".join(rows)


def test_the_docs_table_of_task_options_is_the_declarations():
  text = open(os.path.join(ROOT, "docs", "training.md"), encoding="utf-8").read()
  header = "| flag | only for | default | allowed |"
  assert text.count(header) == 1
  documented = text[text.index(header):].split("\n\n")[0]
  assert documented == option_table()  # no option missing, none that no task declares


def test_each_built_in_task_declares_its_options_and_none_is_a_general_setting():
  got = {name: [o.name for o in tasks.options(name)] for name in tasks.NAMES}
  assert got == {"binary_addition": ["bit_order"], "adding": [], "seq_length": ["data_rules"],
                 "copy": [], "multi_copy": ["num_segments"], "reber": ["data_rules"],
                 "trajectory": ["prefix_len", "feedback", "teacher_forcing_decay_steps"],
                 "decay": ["prefix_len", "feedback", "teacher_forcing_decay_steps"],
                 "digits": ["permute", "eval_split"], "mnist": ["permute", "eval_split", "data_dir"],
                 "uea": ["dataset", "data_dir", "eval_split"],
                 "text": ["corpus", "data_dir", "eval_split"]}
  for name in tasks.NAMES:
    for option in tasks.options(name):
      assert option.name not in FIELDS and option.kind in KINDS, (name, option)
  # the defaults the launcher fills are the ones the factories use when called bare
  s = Settings(task="binary_addition").resolved()
  assert s.task_options == {"bit_order": "lsb_first"} and s.recorded()["bit_order"] == "lsb_first"
  assert Settings(task="adding").resolved().task_options == {}


def test_option_error_names_the_option_and_the_launcher_names_the_flag(tmp_path):
  error = tasks.OptionError("seq_len", 3, "must be an int >= 5 for reber")
  assert (error.option, error.value, error.allowed) == ("seq_len", 3, "must be an int >= 5 for reber")
  assert str(error) == "seq_len=3: must be an int >= 5 for reber" and isinstance(error, ValueError)
  with pytest.raises(tasks.OptionError) as raised:
    tasks.get("reber", seq_len=3)
  assert raised.value.option == "seq_len" and raised.value.value == 3
  assert _refused(tmp_path, task="reber", seq_len=3).startswith(
      "--seq_len=3: must be an int >= 5 for reber (the shortest valid strings")
  assert _refused(tmp_path, task="multi_copy", seq_len=4, num_segments=0) == \
      "--num_segments=0: must be an integer >= 1"


def test_an_unknown_task_with_a_task_option_is_one_line(tmp_path):
  message = _refused(tmp_path, task="nosuch", data_dir="/tmp")
  assert message.startswith("--task=nosuch: unknown task 'nosuch'; allowed: binary_addition")
  # with every default given, so the task is first looked up for its options
  assert _refused(tmp_path, task="nosuch", data_dir="/tmp", seq_len=4).startswith(
      "--task=nosuch: unknown task 'nosuch'")


def test_a_user_task_takes_a_built_in_option_and_declares_its_own(user_modules, tmp_path):
  mine = __import__("optmine")
  assert tasks.options("optmine:ordered") == (tasks.BUILTIN_OPTIONS["bit_order"]["binary_addition"],)
  assert tasks.options("optmine:wide") == mine.OPTIONS
  _main(task="optmine:ordered", bit_order="msb_first", workdir=str(tmp_path / "o"))
  config = json.loads((tmp_path / "o" / "config.json").read_text())
  assert config["bit_order"] == "msb_first" and "task_options" not in config
  assert mine.SEEN and set(mine.SEEN) == {"msb_first"}  # what the factory was given
  # its own option: from Python (not a flag), its default filled and recorded under its name
  s = Settings(task="optmine:wide", **{k: v for k, v in TINY.items()}).resolved()
  assert s.task_options == {"width": 1}
  out = experiment.run(Settings(task="optmine:wide", task_options={"width": 2}, **TINY,
                                workdir=str(tmp_path / "w")), log=lambda line: None)
  assert len(out[str(tmp_path / "w")]) == 2  # step 0's row and the last
  assert json.loads((tmp_path / "w" / "config.json").read_text())["width"] == 2
  # its own checks: the declaration's minimum, and an OptionError of its factory, name the option
  for width, message in ((0, "--width=0: must be an integer >= 1"), (4, "--width=4: must be <= 3")):
    with pytest.raises(experiment.RunError, match=f"^{message}$"):
      experiment.run(Settings(task="optmine:wide", task_options={"width": width}, **TINY,
                              workdir=str(tmp_path / "bad")), log=lambda line: None)
  assert not (tmp_path / "bad").exists()
  # an option it does not take, even at the built-in's default; an OPTIONS that is no
  # declaration
  assert _refused(tmp_path, task="optmine:wide", permute=False) == \
      "--permute=False: applies only to the digits, mnist tasks (and tasks of yours whose " \
      "factory takes it)"
  assert _refused(tmp_path, task="optbad:ordered", seq_len=4) == \
      "--task=optbad:ordered: optbad.OPTIONS must be a tuple of seqjax.tasks.Option"


def test_a_config_json_recorded_with_options_at_the_top_level_resumes(tmp_path):
  folder = tmp_path / "run"
  _main(task="binary_addition", seq_len=4, bit_order="msb_first", workdir=str(folder))
  config = json.loads((folder / "config.json").read_text())
  # the keys as launchers before task_options wrote them: every setting under its own name
  settings_keys = set(config) - {"seqjax_version", "jax_version", "git_commit", "argv", "backend",
                                 "num_processes"}
  assert settings_keys == {"model", "task", "seq_len", "bit_order", "hidden_size", "num_layers",
                           "readout", "batch_size", "num_steps", "learning_rate", "clip_norm", "dropout",
                           "optimizer", "lr_schedule", "tensorboard", "seed", "eval_every",
                           "eval_size", "unroll", "remat", "bidirectional", "dtype", "num_devices",
                           "workdir"}
  s, _, _ = workdir.load(str(folder))
  assert s.task_options == {"bit_order": "msb_first"} and s.seq_len == 4
  # resumed from that file with the option given again; refused with another value
  _main(task="binary_addition", seq_len=4, bit_order="msb_first", num_steps=4,
        workdir=str(folder))
  rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [0, 2, 4]
  with pytest.raises(SystemExit) as e:
    _main(task="binary_addition", seq_len=4, num_steps=6, workdir=str(folder))
  assert "--bit_order=lsb_first: " in str(e.value.code) and "--bit_order=msb_first" in \
      str(e.value.code)

"""The uea task: the `.ts` reader, standardisation, splits and whole-split evaluation, on files
the tests write (and the real sktime wheel when it is on this machine)."""

import dataclasses
import glob
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax import cells, models, train
from seqjax.tasks import uea
from seqjax.tasks.base import OptionError
from task_helpers import cross_entropy, sample

# Two channels, lengths 3, 1, 4, 2, 5 (unequal), three classes named as a file might name them.
TRAIN = [([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]], "b"),
         ([[4.0], [40.0]], "a"),
         ([[0.5, -1.0, 2.5, 7.0], [5.0, 5.0, 6.0, -8.0]], "c"),
         ([[3.0, 3.0], [1e-3, 2e3]], "a"),
         ([[-2.0, 0.0, 1.0, 1.5, 9.0], [0.25, 0.5, 0.75, 1.0, 1.25]], "b")]
TEST = [([[2.0, 1.0], [0.0, 3.0]], "c"),
        ([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]], "a"),
        ([[7.0], [-7.0]], "b")]
CLASSES = ("a", "b", "c")
HEADER = """# a comment line
% another comment
@problemName Toy
@timeStamps false
@missing false
@univariate false
@dimensions 2
@equalLength false
@classLabel true a b c
@data
"""


def ts_text(series, header=HEADER):
  lines = [":".join(",".join(repr(v) for v in ch) for ch in chans) + ":" + label
           for chans, label in series]
  return header + "\n".join(lines) + "\n"


def write(folder, name="Toy", train_series=TRAIN, test_series=TEST, header=HEADER):
  folder.mkdir(exist_ok=True)
  for part, series in (("TRAIN", train_series), ("TEST", test_series)):
    (folder / f"{name}_{part}.ts").write_text(ts_text(series, header))
  return str(folder)


def raw(series):
  """[T_i, C] float64 arrays and int labels of hand-written series."""
  return ([np.asarray(chans, np.float64).T for chans, _ in series],
          np.asarray([CLASSES.index(label) for _, label in series]))


def refusal(**options):
  """(option, value, allowed) of the OptionError uea.make raises."""
  with pytest.raises(OptionError) as error:
    uea.make(**options)
  return error.value.option, error.value.value, error.value.allowed


def test_the_parser_reads_unequal_lengths_and_channels_and_labels_in_header_order():
  parsed = uea.parse_ts(ts_text(TRAIN), "Toy_TRAIN.ts")
  values, labels = raw(TRAIN)
  assert parsed.classes == CLASSES and [len(v) for v in parsed.values] == [3, 1, 4, 2, 5]
  for got, want in zip(parsed.values, values):
    np.testing.assert_array_equal(got, want)  # [T, C]: step-major, channel 1 is the first field
  np.testing.assert_array_equal(parsed.labels, labels)
  univariate = uea.parse_ts("@univariate true\n@classLabel true 0 1\n@data\n1,2,3:1\n"
                            "8.6429E-4:0\n", "U.ts")
  np.testing.assert_array_equal(univariate.values[0], [[1.0], [2.0], [3.0]])
  np.testing.assert_array_equal(univariate.values[1], [[8.6429e-4]])
  np.testing.assert_array_equal(univariate.labels, [1, 0])


@pytest.mark.parametrize("line, problem", [
    ("1,2,3:4,5:a", r"line 12: channels of unequal lengths \[2, 3\]"),
    ("1,2:a", "line 12: 1 channels, @dimensions says 2"),
    ("1,2:3,x:a", "line 12: channel 2: 'x' is not a number"),
    ("1,?:3,4:a", "line 12: a missing value '\\?'"),
    ("1,2:3,4:z", "line 12: class label 'z' is not one of @classLabel's"),
    ("1,2:3,nan:a", "line 12: a value that is not finite"),
    ("1,2,3", "line 12: no ':' before a class label"),
])
def test_a_malformed_data_line_is_refused_naming_the_file_and_the_line(tmp_path, line, problem):
  text = ts_text(TRAIN[:1]) + line + "\n" + ts_text(TRAIN[1:2], header="")
  folder = tmp_path / "d"
  write(folder)
  (folder / "Toy_TRAIN.ts").write_text(text)
  with pytest.raises(ValueError, match=f"^{folder / 'Toy_TRAIN.ts'} {problem}"):
    uea.make("Toy", str(folder))


@pytest.mark.parametrize("header, problem", [
    ("@timeStamps true\n", "line 1: time-stamped series"),
    ("@targetLabel true\n", "line 1: a regression file"),
    ("@classLabel false\n", "line 1: no class labels"),
    ("@univariate maybe\n", "line 1: @univariate must be true or false"),
    ("@colour blue\n", "line 1: unknown header @colour"),
    ("1,2:a\n", "line 1: a data line before @data"),
])
def test_a_malformed_header_is_refused_naming_the_line(header, problem):
  with pytest.raises(ValueError, match=f"^F.ts {problem}"):
    uea.parse_ts(header + HEADER, "F.ts")
  with pytest.raises(ValueError, match="^F.ts: no @data line$"):
    uea.parse_ts("@classLabel true a\n", "F.ts")


def test_inputs_are_standardised_with_the_training_steps_and_padded_with_zeros(tmp_path):
  task = uea.make("Toy", write(tmp_path / "d"))
  train_values, _ = raw(TRAIN)
  test_values, test_labels = raw(TEST)
  steps = np.concatenate(train_values)  # the valid steps only: padding would pull the mean to 0
  mean, std = steps.mean(axis=0), steps.std(axis=0)
  assert task.seq_len == 6 and task.input_size == 2 and task.output_size == 3
  assert task.held_out_size == 3 and task.classification and not task.per_step
  held = task.held_out(jax.random.key(0), None)
  np.testing.assert_array_equal(held.lengths, [2, 6, 1])
  np.testing.assert_array_equal(held.ys, test_labels)
  for x, v, n in zip(np.asarray(held.xs), test_values, held.lengths):
    np.testing.assert_allclose(x[:n], (v - mean) / std, rtol=1e-5, atol=1e-6)
    assert (x[n:] == 0).all()
  batch = sample(task, 64)  # training draws whole training series, with their lengths
  standardised = [(v - mean) / std for v in train_values]
  labels = raw(TRAIN)[1]
  for x, y, n in zip(batch.xs, batch.ys, batch.lengths):
    i = [j for j, v in enumerate(standardised) if len(v) == n]
    assert len(i) == 1 and y == labels[i[0]]
    np.testing.assert_allclose(x[:n], standardised[i[0]], rtol=1e-5, atol=1e-6)
    assert (x[n:] == 0).all()
  assert set(batch.lengths) == {1, 2, 3, 4, 5}


def test_the_sktime_wheel_is_read_as_the_files_are(tmp_path):
  files = write(tmp_path / "files")
  wheel_dir = tmp_path / "wheel"
  wheel_dir.mkdir()
  with zipfile.ZipFile(wheel_dir / "sktime-9.9.9-py3-none-any.whl", "w") as z:
    for part, series in (("TRAIN", TRAIN), ("TEST", TEST)):
      z.writestr(f"sktime/datasets/data/Toy/Toy_{part}.ts", ts_text(series))
    z.writestr("sktime/datasets/data/Half/Half_TRAIN.ts", ts_text(TRAIN))  # no TEST: not listed
    z.writestr("sktime/__init__.py", "raise SystemExit('never imported')\n")
  for split in ("test", "validation"):
    a, b = uea.make("Toy", files, split), uea.make("Toy", str(wheel_dir), split)
    for x, y in zip(a.held_out(jax.random.key(0), None), b.held_out(jax.random.key(0), None)):
      np.testing.assert_array_equal(x, y)
  assert uea.available(str(wheel_dir)) == ["Toy"]
  assert refusal(dataset=None, data_dir=str(wheel_dir)) == \
      ("dataset", None, f"required (the uea task needs one); found in {wheel_dir}: Toy")
  assert refusal(dataset="Half", data_dir=str(wheel_dir)) == \
      ("dataset", "Half", f"not in --data_dir={wheel_dir}; found there: Toy")
  member = f"{wheel_dir / 'sktime-9.9.9-py3-none-any.whl'} \\(sktime/datasets/data/Bad/Bad_TEST.ts"
  with zipfile.ZipFile(wheel_dir / "sktime-9.9.9-py3-none-any.whl", "a") as z:
    z.writestr("sktime/datasets/data/Bad/Bad_TRAIN.ts", ts_text(TRAIN))
    z.writestr("sktime/datasets/data/Bad/Bad_TEST.ts", ts_text(TEST) + "1,2:a\n")
  with pytest.raises(ValueError, match=f"^{member}\\) line 14: 1 channels"):
    uea.make("Bad", str(wheel_dir))


def test_bad_options_and_disagreeing_files_are_refused_in_one_line(tmp_path):
  option, value, allowed = refusal(dataset="Toy")
  assert (option, value) == ("data_dir", None)
  assert allowed.startswith("required (the uea task needs a folder")
  assert refusal(dataset="../x", data_dir=str(tmp_path)) == \
      ("dataset", "../x", "a dataset name: letters, digits, _ and -")
  assert refusal(dataset="Toy", data_dir=str(tmp_path / "none")) == \
      ("data_dir", str(tmp_path / "none"), "not a folder")
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "sktime-1.0-py3-none-any.whl").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match=f"^{broken / 'sktime-1.0-py3-none-any.whl'}: not a "
                     "readable zip"):
    uea.make("Toy", str(broken))
  with pytest.raises(ValueError, match="must be one of test, validation"):
    uea.make("Toy", write(tmp_path / "d"), eval_split="train")
  other = HEADER.replace("@classLabel true a b c", "@classLabel true a b c d")
  folder = write(tmp_path / "e")
  (tmp_path / "e" / "Toy_TEST.ts").write_text(ts_text(TEST, other))
  with pytest.raises(ValueError, match=f"^{tmp_path / 'e' / 'Toy_TEST.ts'}: @classLabel lists "
                     "a b c d, the training file a b c$"):
    uea.make("Toy", folder)


def test_the_validation_split_is_a_fixed_fifth_of_the_training_file_left_out_of_training(
    tmp_path):
  rng = np.random.default_rng(5)  # ten series told apart by their lengths
  series = [(rng.normal(size=(2, n)).tolist(), CLASSES[n % 3]) for n in range(1, 11)]
  task = uea.make("Toy", write(tmp_path / "d", train_series=series), eval_split="validation")
  order = np.random.default_rng(uea.SPLIT_SEED).permutation(10)
  kept, held_idx = sorted(order[:8]), sorted(order[8:])
  assert task.held_out_size == 2
  values, labels = raw(series)
  steps = np.concatenate([values[i] for i in kept])  # statistics of the 8 trained on
  mean, std = steps.mean(axis=0), steps.std(axis=0)
  for key in (0, 9):  # the same split whatever the key
    held = task.held_out(jax.random.key(key), None)
    np.testing.assert_array_equal(held.lengths, [i + 1 for i in held_idx])
    np.testing.assert_array_equal(held.ys, labels[held_idx])
    for x, i in zip(np.asarray(held.xs), held_idx):
      np.testing.assert_allclose(x[:i + 1], (values[i] - mean) / std, rtol=1e-5, atol=1e-6)
  drawn = set(sample(task, 200).lengths.tolist())
  assert drawn == {i + 1 for i in kept}  # training draws every kept series and no held one
  assert uea.make("Toy", str(tmp_path / "d"), eval_split="validation").held_out_size == 2


def test_evaluation_counts_every_series_once_with_logits_read_at_its_last_valid_step(tmp_path):
  rng = np.random.default_rng(1)
  # three lengths only: the oracle compiles once per length
  test_series = [(rng.normal(size=(2, n)).tolist(), CLASSES[i % 3])
                 for i, n in enumerate((4, 1, 7, 1, 7, 4, 4))]
  task = uea.make("Toy", write(tmp_path / "d", test_series=test_series))
  cell = cells.get("gru", hidden_size=5)
  shapes = jax.eval_shape(lambda key: models.init(cell, key, task.input_size, task.output_size),
                          jax.random.key(0))  # drawn in NumPy: the initialisers' QR compiles slowly
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.7, s.shape), s.dtype), shapes)
  held = task.held_out(jax.random.key(0), None)
  assert held.xs.shape == (7, 7, 2)
  apply = jax.jit(lambda xs, lengths: models.apply(cell, params, xs, lengths, per_step=False))
  # oracle: each series alone, cut to its own length, no padding, no lengths
  xs = np.asarray(held.xs)  # sliced in NumPy: a jax slice per series would compile each
  logits = np.stack([np.asarray(apply(xs[i:i + 1, :n], None))[0]
                     for i, n in enumerate(np.asarray(held.lengths))]).astype(np.float64)
  padded = np.asarray(apply(held.xs, held.lengths))
  np.testing.assert_allclose(padded, logits, rtol=1e-5, atol=1e-6)
  labels = np.asarray(held.ys)
  cfg = train.Config(cell=cell, task=task, optimizer=optax.adam(1e-3), batch_size=3)
  means = jax.jit(train.evaluate_fn(cfg))(params, held)  # chunks 3 + 3 + 1 padded with 2
  right = np.argmax(logits, axis=-1) == labels
  assert 0 < right.sum() < 7  # the accuracy below could be off by one series
  np.testing.assert_allclose(means["accuracy"], right.mean(), rtol=1e-6)
  np.testing.assert_allclose(means["loss"], cross_entropy(logits, labels).mean(), rtol=1e-5)
  values = task.losses(jnp.asarray(padded), held)
  np.testing.assert_array_equal(values["accuracy"], right.astype(np.float32))


SKTIME = sorted(glob.glob("/work/data/sktime/sktime-*.whl"))


@pytest.mark.slow
@pytest.mark.skipif(not SKTIME, reason="the sktime wheel is not on this machine")
@pytest.mark.parametrize("name, channels, shortest, longest, classes, sizes", [
    ("JapaneseVowels", 12, 7, 29, 9, (270, 370)),
    ("PLAID", 1, 100, 1344, 11, (537, 537)),
])
def test_the_archive_datasets_in_the_real_sktime_wheel(name, channels, shortest, longest,
                                                       classes, sizes):
  data_dir = os.path.dirname(SKTIME[0])
  train_part, test_part = uea.load(data_dir, name)
  lengths = [len(v) for v in train_part.values + test_part.values]
  assert (min(lengths), max(lengths)) == (shortest, longest)
  assert (len(train_part.values), len(test_part.values)) == sizes
  task = uea.make(name, data_dir)
  assert (task.input_size, task.output_size, task.seq_len, task.held_out_size) == \
      (channels, classes, longest, sizes[1])
  assert sorted(set(train_part.labels.tolist())) == list(range(classes))


def test_the_launcher_runs_it_named_by_its_dataset_and_refuses_what_it_cannot_read(tmp_path):
  import json
  from seqjax import experiment
  from seqjax.settings import Settings
  from task_helpers import refused
  data_dir = write(tmp_path / "d")
  options = {"dataset": "Toy", "data_dir": data_dir}
  s = Settings(task="uea", task_options=options, model="rnn", hidden_size=4, batch_size=4,
               num_steps=2, eval_every=2)
  resolved = s.resolved()  # T is the data's: its longest series (6 steps, in the test file)
  assert resolved.seq_len == 6 and resolved.workdir == "runs/uea-Toy-rnn-T6-s0"
  assert Settings(task="uea", task_options=dict(options, eval_split="validation")).resolved() \
      .workdir == "runs/uea-Toy-validation-rwa-T6-s0"
  workdir = tmp_path / "run"
  rows = experiment.run(dataclasses.replace(s, workdir=str(workdir)), log=lambda line: None)
  config = json.loads((workdir / "config.json").read_text())
  assert (config["dataset"], config["data_dir"], config["eval_split"], config["seq_len"]) == \
      ("Toy", data_dir, "test", 6)
  assert rows[str(workdir)][-1]["eval_accuracy"] * 3 in (0, 1, 2, 3)  # of the 3 test series
  other = tmp_path / "other"  # refused(...) checks that nothing is written in other/run
  assert refused(other, task="uea", data_dir=data_dir) == \
      f"--dataset=None: required (the uea task needs one); found in {data_dir}: Toy"
  assert refused(other, task="uea", dataset="Toy").startswith("--data_dir=None: required")
  assert refused(other, task="uea", dataset="Nope", data_dir=data_dir) == \
      f"--dataset=Nope: not in --data_dir={data_dir}; found there: Toy"
  with pytest.raises(experiment.RunError, match="^--seq_len=9: the uea task's length is its "
                     "data's longest series, 6$"):
    experiment.run(dataclasses.replace(s, seq_len=9, workdir=str(tmp_path / "r9")))
  assert not (tmp_path / "r9").exists()


def test_a_launch_parses_the_files_once(tmp_path, monkeypatch):
  """resolved() builds the task to learn its length and validate() builds it again: the files
  are parsed once, and again only once they change."""
  from seqjax import experiment
  from seqjax.settings import Settings, validate
  parsed, parse = [], uea.parse_ts
  monkeypatch.setattr(uea, "parse_ts", lambda text, where: parsed.append(where) or parse(text, where))
  folder = tmp_path / "d"
  options = {"dataset": "Toy", "data_dir": write(folder)}
  s = Settings(task="uea", task_options=options, model="rnn", hidden_size=2, batch_size=4,
               num_steps=1, eval_every=1, workdir=str(tmp_path / "run"))
  experiment.run(s, log=lambda line: None)
  assert [os.path.basename(w) for w in parsed] == ["Toy_TRAIN.ts", "Toy_TEST.ts"]
  resolved = s.resolved()
  task = validate(dataclasses.replace(resolved, task_options=dict(
      resolved.task_options, eval_split="validation")))
  assert len(parsed) == 2 and task.seq_len == 6  # another split of the same files
  write(folder, test_series=TEST + [([[1.0] * 8, [2.0] * 8], "a")])  # now 8 steps long
  assert Settings(task="uea", task_options=options).resolved().seq_len == 8
  assert len(parsed) == 4  # the changed files, read again

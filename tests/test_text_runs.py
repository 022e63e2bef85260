"""The text task through the runner: resume with the carried state, a group of seeds as one
program, the test part at the end, a corpus too short for the batch, sampling."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from seqjax import checkpoint, experiment, models, sampling
from seqjax.settings import RunError, Settings

TIMING = ("examples_per_sec", "wall_time")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _corpus_dir(tmp_path, n=1300):
  folder = tmp_path / "corpus"
  folder.mkdir(exist_ok=True)
  rng = np.random.default_rng(0)
  (folder / "a.txt").write_bytes(bytes(rng.choice(np.frombuffer(b"abcde fgh\n", np.uint8), n)))
  return str(folder)


def text_settings(data_dir, **changes):
  """gru H=8, 3 streams, windows of 7: (1170 // 3 - 1) // 7 = 55 windows per stream."""
  base = dict(model="gru", task="text", seq_len=7, hidden_size=8, batch_size=3, num_steps=6,
              eval_every=3, learning_rate=0.01, task_options={"data_dir": data_dir})
  return Settings(**dict(base, **changes))


def _run(s):
  return experiment.run(s, log=lambda line: None)


def _state(path):
  """The train state a checkpoint holds (without the host-side entry)."""
  with open(path, "rb") as f:
    saved = serialization.msgpack_restore(f.read())
  saved.pop(checkpoint.HOST, None)
  return saved


def _rows(folder):
  with open(os.path.join(folder, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def _assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_resume_equals_uninterrupted_carried_state_included(tmp_path):
  data = _corpus_dir(tmp_path)
  whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
  _run(text_settings(data, num_steps=9, workdir=whole))
  _run(text_settings(data, num_steps=3, workdir=part))
  _run(text_settings(data, num_steps=9, workdir=part))
  a, b = _state(os.path.join(whole, "checkpoint.msgpack")), \
      _state(os.path.join(part, "checkpoint.msgpack"))
  assert set(a) == {"step", "params", "opt_state", "carry"} and int(a["step"]) == 9
  _assert_same_state(a, b)
  assert _rows(whole) == _rows(part)
  config = json.load(open(os.path.join(whole, "config.json")))
  assert config["corpus_kind"] == "txt" and config["corpus_bytes"] == 1300
  assert config["vocabulary"] == sorted(set(b"abcde fgh\n"))
  best = json.load(open(os.path.join(whole, "best.json")))
  assert best["metric"] == "eval_bits_per_char" and best["test_bits_per_char"] > 0
  assert all("test_bits_per_char" not in r for r in _rows(whole))
  assert set(_rows(whole)[-1]) >= {"eval_bits_per_char", "eval_accuracy", "eval_perplexity"}


@pytest.mark.slow
def test_a_group_of_seeds_equals_its_solo_runs(tmp_path):
  data = _corpus_dir(tmp_path)
  group, solo = str(tmp_path / "group"), str(tmp_path / "solo")
  _run(text_settings(data, seeds=(0, 1), workdir=group))
  _run(text_settings(data, seed=1, workdir=solo))
  a = _state(os.path.join(group, "s1", "checkpoint.msgpack"))
  b = _state(os.path.join(solo, "checkpoint.msgpack"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_a_corpus_too_short_for_the_batch_is_one_line_and_nothing_written(tmp_path):
  data = _corpus_dir(tmp_path, n=470)
  out = tmp_path / "run"
  with pytest.raises(RunError, match=r"--batch_size=3 --seq_len=7: .* at least 471 bytes") as e:
    _run(text_settings(data, seq_len=7, workdir=str(out)))
  assert "\n" not in str(e.value) and not out.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A text run of 6 steps and an adding run of 1, trained once for the sampling tests."""
  tmp = tmp_path_factory.mktemp("sampling")
  run, other = str(tmp / "run"), str(tmp / "adding")
  _run(text_settings(_corpus_dir(tmp), workdir=run))
  _run(Settings(model="rnn", task="adding", seq_len=3, hidden_size=2, batch_size=2,
                num_steps=1, eval_every=1, eval_size=2, workdir=other))
  return run, other


@pytest.mark.slow
def test_sampling_is_reproducible_and_refuses_bad_input(trained):
  run, other = trained
  model = sampling.load(run, "best")
  first = b"".join(sampling.generate(model, b"ab", 40, temperature=0.7, seed=3))
  assert first == b"".join(sampling.generate(model, b"ab", 40, temperature=0.7, seed=3))
  assert len(first) == 40 and set(first) <= set(b"abcde fgh\n")
  assert first != b"".join(sampling.generate(model, b"ab", 40, temperature=0.7, seed=4))
  with pytest.raises(RunError, match="not in the run's vocabulary"):
    sampling.check_prime(model, b"xyz")
  with pytest.raises(RunError, match="must be a number > 0"):
    next(sampling.generate(model, b"a", 3, temperature=0.0))
  with pytest.raises(RunError, match="a run of the adding task; sampling needs a text run"):
    sampling.load(other, "last")


@pytest.mark.slow
def test_sampling_draws_from_the_models_own_next_byte_distribution_and_compiles_once(trained):
  """Byte i is jax.random.categorical(fold_in(key(seed), i), logits / temperature), the logits
  those of models.apply (the scan over the whole sequence) on the one-hot prime and the bytes
  drawn before; another seed or temperature reuses the compiled steps."""
  model = sampling.load(trained[0], "best")
  prime, V = b"abca", len(model.vocabulary)
  tokens = np.searchsorted(model.vocabulary, np.frombuffer(prime, np.uint8))
  def by_hand(tokens, i, seed, temperature):  # the i-th draw after reading `tokens`
    logits = models.apply(model.cell, model.params, jax.nn.one_hot(
        np.asarray(tokens)[None], V, dtype=jnp.float32), per_step=True)[0, -1]
    return int(jax.random.categorical(jax.random.fold_in(jax.random.key(seed), i),
                                      logits / temperature))

  compiled = None
  for seed, temperature in ((0, 0.7), (5, 1.3), (9, 0.2)):
    got = b"".join(sampling.generate(model, prime, 2, temperature, seed))
    first = by_hand(tokens, 0, seed, temperature)
    second = by_hand(list(tokens) + [first], 1, seed, temperature)  # the first byte fed back
    assert got == bytes([int(model.vocabulary[first]), int(model.vocabulary[second])])
    sizes = sampling._draw._cache_size(), sampling._read._cache_size()
    assert compiled is None or sizes == compiled  # another seed or temperature: no new compile
    compiled = sizes


def _sample_cli(*args):
  return subprocess.run([sys.executable, "-m", "launch.sample", *args], cwd=ROOT,
                        capture_output=True, timeout=300)


@pytest.mark.slow
def test_sample_cli_streams_the_same_text_for_the_same_arguments(trained):
  run, other = trained
  args = (f"--workdir={run}", "--prime=ab", "--length=30", "--temperature=0.5", "--seed=2")
  a, b = _sample_cli(*args), _sample_cli(*args)
  assert a.returncode == 0 and a.stdout == b.stdout
  model = sampling.load(run, "best")
  assert a.stdout == b"ab" + b"".join(sampling.generate(model, b"ab", 30, 0.5, 2)) + b"\n"
  for bad, says in ((("--workdir=" + other,), b"sampling needs a text run"),
                    ((f"--workdir={run}", "--prime=xyz"), b"not in the run's vocabulary"),
                    ((f"--workdir={run}", "--temperature=0"), b"--temperature=0.0: must be")):
    out = _sample_cli(*bad)
    assert out.returncode != 0 and out.stdout == b""
    assert out.stderr.strip().startswith(b"error: ") and says in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("changes,says", [
    (dict(readout="attention"), "--readout=attention: the text task carries the cell state"),
    (dict(dropout=1.0), "--dropout=1.0: must be a number in [0, 1)"),
    (dict(task_options={"data_dir": "/nonexistent"}), "--data_dir=/nonexistent: not a folder"),
    (dict(task_options={"corpus": "kjv"}), "no kjv corpus in"),
    (dict(task_options={"corpus": "poems"}), "--corpus=poems: allowed: shakespeare, kjv"),
    (dict(task_options={"eval_split": "train"}), "--eval_split=train: allowed: validation, test"),
])
def test_bad_text_settings_are_one_line_and_nothing_written(tmp_path, changes, says):
  data = _corpus_dir(tmp_path)
  out = tmp_path / "run"
  s = text_settings(data, workdir=str(out))
  if "task_options" in changes:
    changes = dict(task_options={**s.task_options, **changes["task_options"]})
  with pytest.raises(RunError) as e:
    _run(dataclasses.replace(s, **changes))
  assert says in str(e.value) and "\n" not in str(e.value) and not out.exists()

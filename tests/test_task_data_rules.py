"""--data_rules=authors (the RWA authors' code) for seq_length and reber, re-derived per example;
the default, "paper", draws what it drew before the rule existed; the setting's checks."""

import hashlib

import jax
import numpy as np
import pytest

from seqjax.settings import Settings
from seqjax import tasks
from seqjax.tasks import reber
from task_helpers import MODULES, cached_task, refused, sample_named
from test_task_reber import GRAMMAR, _reber_accepts


def _digest(*arrays):
  h = hashlib.sha256()
  for a in arrays:
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


# Drawn (key 3, 64 examples) by the samplers as they were before --data_rules and multi_copy
# existed (commit 316a63b). Only a change of JAX's PRNG streams should ever move these.
@pytest.mark.parametrize("name,T,expected", [
    ("copy", 12, "07d1f451822d24a9"), ("reber", 12, "00446a5d556d7d0d")])
def test_paper_rules_and_copy_draw_what_they_drew_before(name, T, expected):
  options = dict(seq_len=T) if name == "copy" else dict(seq_len=T, data_rules="paper")
  task, _ = cached_task(name, **options)
  batch = jax.tree.map(lambda v: None if v is None else np.asarray(v),
                       jax.jit(task.sample, static_argnums=1)(jax.random.key(3), 64))
  assert _digest(*(v for v in batch if v is not None)) == expected


def test_seq_length_paper_rules_draw_what_they_drew_before():
  task, _ = cached_task("seq_length", seq_len=20, data_rules="paper")
  batch = jax.jit(task.sample, static_argnums=1)(jax.random.key(3), 64)
  assert _digest(np.asarray(batch.ys), np.asarray(batch.lengths)) == "ed3ae1f0a698b99e"
  xs = np.asarray(batch.xs, np.float64)   # normal draws: the last bits may differ by backend
  np.testing.assert_allclose([xs.sum(), np.abs(xs).sum()], [-9.95372286735801, 483.36752864782466],
                             rtol=1e-5)


@pytest.mark.parametrize("T", [7, 20])
def test_seq_length_authors_values_lengths_and_labels(T):
  batch = sample_named("seq_length", 256, seq_len=T, data_rules="authors")
  lengths = batch.lengths
  assert set(lengths.tolist()) == set(range(T))            # 0..T-1: both ends, never T
  values = batch.xs[..., 0]
  valid = np.arange(T)[None, :] < lengths[:, None]
  assert (values[~valid] == 0).all()
  inside = values[valid]
  assert (inside >= 0).all() and (inside < 1).all()
  assert abs(inside.mean() - 0.5) < 0.03 and abs(inside.std() - 12 ** -0.5) < 0.02  # U[0, 1)
  # numpy's round is half to even, as the authors' np.round(l / T)
  np.testing.assert_array_equal(batch.ys, np.round(lengths.astype(np.float64) / T))
  by_length = dict(zip(lengths.tolist(), batch.ys.tolist()))
  if T % 2 == 0:
    assert (by_length[T // 2 - 1], by_length[T // 2], by_length[T // 2 + 1]) == (0, 0, 1)
  else:
    assert (by_length[T // 2], by_length[T // 2 + 1]) == (0, 1)


def _end_state(word, state="start"):
  """The grammar's state after reading word from `state`, or None where a letter is refused."""
  for letter in word:
    if letter not in GRAMMAR[state]:
      return None
    state = GRAMMAR[state][letter]
  return state


def _viable_prefix(word):
  """word can be continued into a valid string."""
  return _end_state(word) is not None


def _viable_suffix(word):
  """Some state of the grammar reads word to the end: word ends some valid string."""
  return any(_end_state(word, state) == "done" for state in GRAMMAR)


def _spliced(word):
  return any(_viable_prefix(word[:j]) and _viable_suffix(word[j:]) for j in range(len(word)))


def _words(batch):
  return ["".join(reber.LETTERS[i] for i in x[:n].argmax(axis=-1))
          for x, n in zip(batch.xs, batch.lengths)]


@pytest.mark.parametrize("T", [5, 12, 50])
def test_reber_authors_negatives_are_invalid_splices_of_valid_strings(T):
  batch = sample_named("reber", 256, seq_len=T, data_rules="authors")
  assert ((batch.lengths >= 1) & (batch.lengths <= T)).all()
  words = _words(batch)
  for x, n in zip(batch.xs, batch.lengths):
    assert (x[n:] == 0).all() and (x[:n].sum(axis=-1) == 1).all()
  negatives = [w for w, y in zip(words, batch.ys) if not y]
  for word, y in zip(words, batch.ys):
    assert _reber_accepts(word) == bool(y), (word, y)      # every label right
  assert 0.4 < len(negatives) / len(words) < 0.6
  for word in negatives:
    assert _spliced(word), word                            # a valid prefix + a valid suffix
  assert any(w[0] != "B" for w in negatives)               # a splice may keep no prefix at all
  # the paper's single substitutions mostly are not such splices: the check has teeth
  paper = sample_named("reber", 256, seq_len=T, data_rules="paper")
  paper_negatives = [w for w, y in zip(_words(paper), paper.ys) if not y]
  assert np.mean([_spliced(w) for w in paper_negatives]) < 0.5


def test_reber_splice_with_too_few_tries_leaves_strings_valid_never_mislabelled(monkeypatch):
  T = 5     # one candidate is usable only ~44% of the time here
  monkeypatch.setattr(reber, "SPLICE_TRIES", 1)
  task = reber.make(seq_len=T, data_rules="authors")
  batch = jax.tree.map(np.asarray, jax.jit(task.sample, static_argnums=1)(jax.random.key(0),
                                                                           2048))
  assert (batch.lengths <= T).all()
  for word, y in zip(_words(batch), batch.ys):
    assert _reber_accepts(word) == bool(y), (word, y)
  assert 0.15 < 1 - batch.ys.mean() < 0.3     # fewer negatives: the unusable ones stayed valid
  full = sample_named("reber", 256, seq_len=T, data_rules="authors")
  assert 0.4 < 1 - full.ys.mean() < 0.6       # SPLICE_TRIES candidates: about half negatives


@pytest.mark.parametrize("name", ["seq_length", "reber"])
def test_make_rejects_unknown_rules(name):
  with pytest.raises(tasks.OptionError, match=r"^data_rules='code': must be one of paper, authors$"):
    MODULES[name].make(data_rules="code")


@pytest.mark.parametrize("settings,message", [
    (dict(task="seq_length", data_rules="code"), "--data_rules=code: allowed: paper, authors"),
    (dict(task="adding", data_rules="authors"),
     "--data_rules=authors: applies only to the seq_length, reber tasks"),
    (dict(task="copy", data_rules="authors"),
     "--data_rules=authors: applies only to the seq_length, reber tasks"),
])
def test_bad_data_rules_is_one_line_and_writes_nothing(settings, message, tmp_path):
  assert refused(tmp_path, **settings) == message


def test_data_rules_recorded_where_they_apply_and_named_when_authors():
  s = Settings(task="seq_length", task_options=dict(data_rules="authors")).resolved()
  assert s.workdir == "runs/seq_length-authors-rwa-T100-s0"
  assert s.recorded()["data_rules"] == "authors"
  assert Settings(task="reber", task_options=dict(data_rules="authors"), seed=2).resolved().workdir \
      == \
      "runs/reber-authors-rwa-T50-s2"
  paper = Settings(task="seq_length").resolved()
  assert paper.workdir == "runs/seq_length-rwa-T100-s0" and paper.recorded()["data_rules"] == "paper"
  assert "data_rules" not in Settings(task="adding").resolved().recorded()

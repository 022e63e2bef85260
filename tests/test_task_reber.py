"""The reber task against an acceptor of the grammar written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.tasks import reber
from task_helpers import (cached_task, check_losses, cross_entropy, logits_with_mistakes,
                          sample_named)


# The standard Reber grammar as letter moves, numbered independently of the module:
# start -B-> 0; 0 -T-> 1, 0 -P-> 2; 1 -S-> 1, 1 -X-> 3; 2 -T-> 2, 2 -V-> 4;
# 3 -X-> 2, 3 -S-> "E"; 4 -P-> 3, 4 -V-> "E"; "E" -E-> done.
GRAMMAR = {"start": {"B": 0}, 0: {"T": 1, "P": 2}, 1: {"S": 1, "X": 3}, 2: {"T": 2, "V": 4},
           3: {"X": 2, "S": "E"}, 4: {"P": 3, "V": "E"}, "E": {"E": "done"}, "done": {}}


def _reber_accepts(word):
  state = "start"
  for letter in word:
    if letter not in GRAMMAR[state]:
      return False
    state = GRAMMAR[state][letter]
  return state == "done"


def test_the_test_acceptor_itself():
  for word in ["BTXSE", "BPVVE", "BTSXXTVVE", "BPTTVPXVVE", "BTSSXXVPSE"]:
    assert _reber_accepts(word), word
  for word in ["", "B", "BTXS", "BTXSEE", "TXSE", "BTXXE", "BPVPE", "BTSSE"]:
    assert not _reber_accepts(word), word


@pytest.mark.parametrize("T", [5, 12, 50])
def test_reber_labels_agree_with_an_independent_acceptor(T):
  assert reber.LETTERS == "BTPSXVE"
  batch = sample_named("reber", 256, seq_len=T)
  assert ((batch.lengths >= 5) & (batch.lengths <= T)).all()
  words = []
  for x, length, y in zip(batch.xs, batch.lengths, batch.ys):
    assert (x[length:] == 0).all()
    assert set(np.unique(x[:length])) == {0.0, 1.0} and (x[:length].sum(axis=-1) == 1).all()
    word = "".join(reber.LETTERS[i] for i in x[:length].argmax(axis=-1))
    assert _reber_accepts(word) == bool(y), (word, y)
    assert word[0] == "B"                           # corruption never touches the first B
    if y:
      assert word[-1] == "E"
    words.append(word)
  assert 0.3 < batch.ys.mean() < 0.7
  valid = {w for w, y in zip(words, batch.ys) if y}
  if T == 5:
    assert valid == {"BTXSE", "BPVVE"}
  else:
    lengths = {len(w) for w in valid}
    assert max(lengths) >= min(T, 12) - 1 and len(lengths) >= 5  # long strings, not just 5s


def _valid_reber_words(max_len):
  words, frontier = [], [("", "start")]
  while frontier:
    word, state = frontier.pop()
    if state == "done":
      words.append(word)
    elif len(word) < max_len:
      frontier.extend((word + letter, nxt) for letter, nxt in GRAMMAR[state].items())
  return words


def test_reber_device_acceptor_matches_the_test_acceptor():
  # One substitution never turns a Reber string into another one, so sampled labels alone
  # cannot tell the acceptor from "not corrupted"; deletions, swaps and random strings can.
  max_len = 12
  rng = np.random.default_rng(0)
  valid = _valid_reber_words(max_len)
  words = list(valid)
  words += [w[:k] + w[k + 1:] for w in valid for k in range(len(w))]          # deletions
  words += [w[:k] + w[k + 1] + w[k] + w[k + 2:] for w in valid for k in range(len(w) - 1)]
  words += ["".join(rng.choice(list("BTPSXVE"), rng.integers(0, max_len + 1)))
            for _ in range(200)]
  words += ["", "B", "E", "BTXSEE", "BTXSEB"]
  letters = rng.integers(0, 7, (len(words), max_len))   # garbage past each length is ignored
  for row, word in zip(letters, words):
    row[:len(word)] = ["BTPSXVE".index(c) for c in word]
  lengths = np.array([len(w) for w in words], np.int32)
  got = np.asarray(jax.jit(reber.accepts)(jnp.asarray(letters, jnp.int32), jnp.asarray(lengths)))
  expected = np.array([_reber_accepts(w) for w in words])
  assert expected[len(valid):].any() and not expected[len(valid):].all()
  mismatched = [w for w, g, e in zip(words, got, expected) if g != e]
  assert not mismatched, mismatched[:10]


def test_reber_losses():
  task, _ = cached_task("reber", seq_len=12)
  batch = sample_named("reber", 8, seq_len=12)
  wrong = np.arange(8) % 3 == 0
  logits = logits_with_mistakes(batch.ys, wrong, 2, seed=3)
  values = check_losses(task, logits, batch, {"accuracy"})
  np.testing.assert_array_equal(values["accuracy"], 1.0 - wrong)
  np.testing.assert_allclose(values["loss"], cross_entropy(logits, batch.ys), rtol=1e-5)

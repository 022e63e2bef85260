"""The five synthetic task samplers against rules re-derived here in NumPy and plain Python.

Every batch comes from `jax.jit(task.sample, static_argnums=1)` with a fixed key; each task
configuration is compiled once and shared by the tests that use it.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.tasks import adding, binary_addition, reber, seq_length
from seqjax.tasks import variable_copy as copy_task

MODULES = {"binary_addition": binary_addition, "adding": adding, "seq_length": seq_length,
           "copy": copy_task, "reber": reber}
BATCH = 256


@functools.lru_cache(maxsize=None)
def _task(name, **options):
  task = MODULES[name].make(**options)
  return task, jax.jit(task.sample, static_argnums=1)


def _sample(name, n, seed=0, **options):
  """A NumPy copy of the first n examples of a jitted batch drawn with key `seed`.

  Always BATCH examples, so every configuration compiles once whatever n a test wants."""
  _, sample = _task(name, **options)
  batch = sample(jax.random.key(seed), BATCH)
  return jax.tree.map(lambda v: np.asarray(v)[:n], batch)


def _log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _cross_entropy(logits, labels):
  return -np.take_along_axis(_log_softmax(logits), labels[..., None], axis=-1)[..., 0]


def _logits_with_mistakes(labels, wrong, classes, seed):
  """float32 logits [*labels.shape, classes] whose argmax is `labels` except where `wrong`
  (there it is another class); random values elsewhere so the CE is not a constant."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=labels.shape + (classes,))
  other = (labels + rng.integers(1, classes, labels.shape)) % classes
  winner = np.where(wrong, other, labels)
  np.put_along_axis(logits, winner[..., None], logits.max(axis=-1, keepdims=True) + 1.0, axis=-1)
  return logits.astype(np.float32)


def _check_losses(task, outputs, batch, keys):
  values = jax.jit(task.losses)(jnp.asarray(outputs), batch)
  assert set(values) == {"loss", *keys}
  for name, value in values.items():
    assert value.shape == (len(batch.xs),) and value.dtype == jnp.float32, name
  return {name: np.asarray(value) for name, value in values.items()}


# ---------------------------------------------------------------- task records and batch shapes

@pytest.mark.parametrize("name,options,fields,shapes", [
    ("binary_addition", dict(seq_len=8), (2, 2, True, True, 8),
     ((8, 2), np.float32, (8,), np.int32, False)),
    ("adding", dict(seq_len=30), (2, 1, False, False, 30),
     ((30, 2), np.float32, (), np.float32, False)),
    ("seq_length", dict(seq_len=20), (1, 2, False, True, 20),
     ((20, 1), np.float32, (), np.int32, True)),
    ("copy", dict(seq_len=30), (9, 8, True, True, 50),
     ((50, 9), np.float32, (50,), np.int32, False)),
    ("reber", dict(seq_len=12), (7, 2, False, True, 12),
     ((12, 7), np.float32, (), np.int32, True)),
])
def test_task_records_and_batch_shapes(name, options, fields, shapes):
  task, _ = _task(name, **options)
  assert task.name == name
  assert (task.input_size, task.output_size, task.per_step, task.classification,
          task.seq_len) == fields
  x_shape, x_dtype, y_shape, y_dtype, has_lengths = shapes
  batch = _sample(name, 16, **options)
  assert batch.xs.shape == (16, *x_shape) and batch.xs.dtype == x_dtype
  assert batch.ys.shape == (16, *y_shape) and batch.ys.dtype == y_dtype
  if has_lengths:
    assert batch.lengths.shape == (16,) and batch.lengths.dtype == np.int32
  else:
    assert batch.lengths is None


@pytest.mark.parametrize("name,seq_len,hidden_size,num_steps", [
    ("binary_addition", 8, 16, 2000), ("adding", 100, 250, 50000),
    ("seq_length", 100, 250, 20000), ("copy", 100, 250, 50000), ("reber", 50, 250, 10000)])
def test_defaults(name, seq_len, hidden_size, num_steps):
  assert MODULES[name].DEFAULTS == dict(seq_len=seq_len, hidden_size=hidden_size,
                                        num_steps=num_steps, batch_size=100, learning_rate=1e-3)


# ------------------------------------------------------------------------------ binary addition

@pytest.mark.parametrize("order", ["lsb_first", "msb_first"])
@pytest.mark.parametrize("bits", [2, 8, 70])
def test_binary_addition_targets_are_the_sum_re_added_with_python_ints(bits, order):
  batch = _sample("binary_addition", 128, seq_len=bits, bit_order=order)
  assert set(np.unique(batch.xs)) <= {0.0, 1.0}
  # position k of a row holds bit k (lsb_first) or bit bits-1-k (msb_first)
  weight = [1 << (k if order == "lsb_first" else bits - 1 - k) for k in range(bits)]
  top = 0 if order == "msb_first" else bits - 1
  for x, y in zip(batch.xs.astype(int), batch.ys):
    a = sum(w * int(bit) for w, bit in zip(weight, x[:, 0]))
    b = sum(w * int(bit) for w, bit in zip(weight, x[:, 1]))
    assert x[top, 0] == 0 and x[top, 1] == 0
    assert a < 2 ** (bits - 1) and b < 2 ** (bits - 1)
    total = a + b
    assert total < 2 ** bits
    assert [int(bit) for bit in y] == [(total // w) % 2 for w in weight]
  if bits >= 8:
    low = np.delete(batch.xs, top, axis=1)
    assert 0.45 < low.mean() < 0.55  # the low bits are fair coins
    # bits past 62 are sampled too (the sum is not limited to a machine integer)
    if bits == 70:
      high = batch.xs[:, 64:69] if order == "lsb_first" else batch.xs[:, 1:6]
      assert 0.3 < high.mean() < 0.7


def test_binary_addition_orders_share_one_rule():
  lsb = _sample("binary_addition", 128, seed=3, seq_len=8, bit_order="lsb_first")
  msb = _sample("binary_addition", 128, seed=3, seq_len=8, bit_order="msb_first")
  np.testing.assert_array_equal(msb.xs, lsb.xs[:, ::-1])
  np.testing.assert_array_equal(msb.ys, lsb.ys[:, ::-1])


def test_binary_addition_losses():
  task, _ = _task("binary_addition", seq_len=8, bit_order="lsb_first")
  batch = _sample("binary_addition", 4, seq_len=8, bit_order="lsb_first")
  wrong = np.zeros((4, 8), bool)
  wrong[0, 3] = True                      # one bit wrong
  wrong[1, :] = True                      # every bit wrong
  wrong[3, [0, 7]] = True                 # two bits wrong; example 2 all right
  logits = _logits_with_mistakes(batch.ys, wrong, 2, seed=0)
  values = _check_losses(task, logits, batch, {"accuracy", "sequence_accuracy"})
  np.testing.assert_allclose(values["accuracy"], [7 / 8, 0.0, 1.0, 6 / 8])
  np.testing.assert_array_equal(values["sequence_accuracy"], [0.0, 0.0, 1.0, 0.0])
  np.testing.assert_allclose(values["loss"], _cross_entropy(logits, batch.ys).mean(axis=1),
                             rtol=1e-5)


# ------------------------------------------------------------------------------------ adding

def test_adding_has_two_distinct_markers_and_their_sum_as_target():
  T = 40
  batch = _sample("adding", 256, seq_len=T)
  values, markers = batch.xs[..., 0], batch.xs[..., 1]
  assert ((values >= 0) & (values < 1)).all()
  positions = []
  for v, m, y in zip(values, markers, batch.ys):
    marked = np.flatnonzero(m)
    assert len(marked) == 2 and marked[0] != marked[1]
    assert (m[marked] == 1.0).all()
    np.testing.assert_allclose(y, float(v[marked[0]]) + float(v[marked[1]]), rtol=1e-6)
    positions.extend(marked)
  positions = np.array(positions)
  assert (positions < T // 4).any() and (positions >= T - T // 4).any()
  assert positions.min() == 0 and positions.max() == T - 1
  assert abs(positions.mean() - (T - 1) / 2) < 1.5  # uniform, not biased to one end


def test_adding_loss_is_the_squared_error():
  task, _ = _task("adding", seq_len=40)
  batch = _sample("adding", 8, seq_len=40)
  outputs = np.linspace(0.0, 2.0, 8, dtype=np.float32)[:, None]
  values = _check_losses(task, outputs, batch, {"mse"})
  expected = (outputs[:, 0].astype(np.float64) - batch.ys) ** 2
  np.testing.assert_allclose(values["loss"], expected, rtol=1e-5)
  np.testing.assert_array_equal(values["mse"], values["loss"])


# -------------------------------------------------------------------------------- seq_length

@pytest.mark.parametrize("T", [7, 20])
def test_seq_length_lengths_padding_and_labels(T):
  batch = _sample("seq_length", 256, seq_len=T)
  lengths = batch.lengths
  assert ((lengths >= 0) & (lengths <= T)).all()
  assert set(lengths.tolist()) == set(range(T + 1))  # the whole range 0..T, both ends included
  for x, length, y in zip(batch.xs[..., 0], lengths, batch.ys):
    assert (x[length:] == 0).all() and (x[:length] != 0).all()
    assert y == (1 if length > T / 2 else 0)
  valid = batch.xs[..., 0][np.arange(T)[None, :] < lengths[:, None]]
  assert abs(valid.mean()) < 0.1 and 0.9 < valid.std() < 1.1  # N(0, 1) values


def test_seq_length_losses():
  task, _ = _task("seq_length", seq_len=20)
  batch = _sample("seq_length", 6, seq_len=20)
  wrong = np.array([False, True, False, True, False, False])
  logits = _logits_with_mistakes(batch.ys, wrong, 2, seed=1)
  values = _check_losses(task, logits, batch, {"accuracy"})
  np.testing.assert_array_equal(values["accuracy"], 1.0 - wrong)
  np.testing.assert_allclose(values["loss"], _cross_entropy(logits, batch.ys), rtol=1e-5)


# -------------------------------------------------------------------------------------- copy

@pytest.mark.parametrize("T", [2, 30])
def test_copy_layout_is_re_derived_per_example(T):
  S = 10
  assert (copy_task.NUM_RECALL, copy_task.NUM_SYMBOLS) == (S, 7)
  assert (copy_task.BLANK, copy_task.DELIMITER) == (7, 8)
  batch = _sample("copy", 256, seq_len=T)
  total = 2 * S + T
  assert batch.xs.shape == (256, total, 9)
  assert set(np.unique(batch.xs)) == {0.0, 1.0} and (batch.xs.sum(axis=-1) == 1).all()
  shown = batch.xs.argmax(axis=-1)
  delimiters = []
  for x, y in zip(shown, batch.ys):
    symbols = x[:S]
    assert (symbols <= 6).all()
    (p,) = np.flatnonzero(x == 8)                  # exactly one delimiter
    assert S <= p <= S + T - 2
    delimiters.append(p)
    rest = np.delete(np.arange(S, total), p - S)
    assert (x[rest] == 7).all()                    # blanks everywhere else
    expected = np.full(total, 7)
    expected[p + 1:p + 1 + S] = symbols
    np.testing.assert_array_equal(y, expected)
  assert min(delimiters) == S and max(delimiters) == S + T - 2
  counts = np.bincount(shown[:, :S].ravel(), minlength=7)
  assert (counts > 0.5 * counts.mean()).all()     # all seven symbols are drawn


def test_copy_losses_count_accuracy_over_recalled_symbols_only():
  S, T = 10, 30
  task, _ = _task("copy", seq_len=T)
  batch = _sample("copy", 3, seq_len=T)
  p = [int(np.flatnonzero(x.argmax(axis=-1) == 8)[0]) for x in batch.xs]
  wrong = np.zeros(batch.ys.shape, bool)
  wrong[0, p[0] + 4] = True                        # one recalled symbol wrong
  wrong[1, 0] = wrong[1, -1] = True                # two blank steps wrong: recall unaffected
  logits = _logits_with_mistakes(batch.ys, wrong, 8, seed=2)
  values = _check_losses(task, logits, batch, {"accuracy", "bits_per_step"})
  np.testing.assert_allclose(values["accuracy"], [(S - 1) / S, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(values["loss"], _cross_entropy(logits, batch.ys).mean(axis=1),
                             rtol=1e-5)
  np.testing.assert_allclose(values["bits_per_step"], values["loss"] / math.log(2), rtol=1e-6)


# ------------------------------------------------------------------------------------- reber

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
  batch = _sample("reber", 256, seq_len=T)
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
  task, _ = _task("reber", seq_len=12)
  batch = _sample("reber", 8, seq_len=12)
  wrong = np.arange(8) % 3 == 0
  logits = _logits_with_mistakes(batch.ys, wrong, 2, seed=3)
  values = _check_losses(task, logits, batch, {"accuracy"})
  np.testing.assert_array_equal(values["accuracy"], 1.0 - wrong)
  np.testing.assert_allclose(values["loss"], _cross_entropy(logits, batch.ys), rtol=1e-5)


# ------------------------------------------------------------------------- arguments and keys

@pytest.mark.parametrize("name,options,argument,allowed", [
    ("binary_addition", dict(seq_len=1), "seq_len", ">= 2"),
    ("binary_addition", dict(seq_len=8.0), "seq_len", ">= 2"),
    ("binary_addition", dict(seq_len=True), "seq_len", ">= 2"),
    ("binary_addition", dict(bit_order="middle"), "bit_order", "lsb_first, msb_first"),
    ("binary_addition", dict(bit_order=None), "bit_order", "lsb_first, msb_first"),
    ("adding", dict(seq_len=1), "seq_len", ">= 2"),
    ("adding", dict(seq_len="100"), "seq_len", ">= 2"),
    ("seq_length", dict(seq_len=0), "seq_len", ">= 2"),
    ("seq_length", dict(seq_len=-5), "seq_len", ">= 2"),
    ("copy", dict(seq_len=1), "seq_len", ">= 2"),
    ("copy", dict(seq_len=None), "seq_len", ">= 2"),
    ("reber", dict(seq_len=4), "seq_len", ">= 5"),
    ("reber", dict(seq_len=50.5), "seq_len", ">= 5"),
])
def test_make_rejects_bad_arguments_by_name(name, options, argument, allowed):
  with pytest.raises(ValueError) as error:
    MODULES[name].make(**options)
  message = str(error.value)
  assert message.startswith(argument), message
  assert allowed in message and repr(options[argument]) in message, message
  assert "\n" not in message


CONFIGS = [("binary_addition", dict(seq_len=8, bit_order="lsb_first")),
           ("adding", dict(seq_len=40)), ("seq_length", dict(seq_len=20)),
           ("copy", dict(seq_len=30)), ("reber", dict(seq_len=12))]


@pytest.mark.parametrize("name,options", CONFIGS, ids=[name for name, _ in CONFIGS])
def test_same_key_same_batch_other_key_other_batch(name, options):
  a, b, c = (_sample(name, 16, seed, **options) for seed in (7, 7, 8))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.xs, c.xs) and not np.array_equal(a.ys, c.ys)
  task, _ = _task(name, **options)
  held = jax.jit(task.held_out, static_argnums=1)(jax.random.key(7), BATCH)
  held = jax.tree.map(lambda v: np.asarray(v)[:16], held)
  for x, y in zip(a, held):
    np.testing.assert_array_equal(x, y)  # synthetic held-out data is drawn like the samples

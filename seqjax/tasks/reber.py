"""Valid vs corrupted strings of the (non-embedded) Reber grammar.

The grammar, as a graph whose edges emit letters:

  0 -B-> 1;  1 -T-> 2, 1 -P-> 3;  2 -S-> 2, 2 -X-> 4;  3 -T-> 3, 3 -V-> 5;
  4 -X-> 3, 4 -S-> 6;  5 -P-> 4, 5 -V-> 6;  6 -E-> end            (e.g. BTXSE, BPVVE, BTSXXTVVE)

Valid strings come from a walk taking each branch with probability 1/2, except that a branch is
never taken if the shortest way out from it would not fit in `seq_len` letters (so long strings
are steered to the exit near the limit; below the limit the walk is the usual one). Half of the
examples (a fair coin each) are corrupted:
- data_rules="paper": one letter after the first is replaced by a different random letter.
- data_rules="authors" (the authors' code): the string is spliced with another valid one, a
  prefix of it (cut at j, uniform over 0..length − 1) followed by a suffix of a freshly drawn
  walk (from j', uniform over 0..its length − 1), drawn again until the result is invalid. With
  fixed shapes: SPLICE_TRIES candidates are drawn at once and the first invalid one that fits in
  `seq_len` is taken (see SPLICE_TRIES for why that many never all fail in practice).
The label is computed by running the grammar's acceptor on the final string, so it is exactly
right even when a corruption happens to yield another valid string. One-hot over LETTERS,
zero past each string's length (`lengths`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.tasks._checks import DATA_RULES_OPTION, check_choice, check_int
from seqjax.tasks.base import Batch, OptionError, Task, accuracy, softmax_cross_entropy

LETTERS = "BTPSXVE"
B, T_, P, S, X, V, E = range(7)
END, DEAD = 7, 8
# (letter, next node) for each node's two branches; node 0 and 6 have one (listed twice)
BRANCHES = np.array([
    [(B, 1), (B, 1)], [(T_, 2), (P, 3)], [(S, 2), (X, 4)], [(T_, 3), (V, 5)],
    [(X, 3), (S, 6)], [(P, 4), (V, 6)], [(E, END), (E, END)], [(-1, END), (-1, END)]])
# letters still needed from each node to finish, E included (shortest way out)
TO_FINISH = np.array([5, 4, 3, 3, 2, 2, 1, 0])
SHORTEST = int(TO_FINISH[0])
# Splice candidates per negative (data_rules="authors"). Measured (BUILD_NOTES.md), one candidate
# is usable (invalid and fits) with probability 0.44 at seq_len 5, rising to 0.84 from 20 on, so
# all 48 fail with probability 0.56^48 ~ 8e-13 per example at worst; were that to happen, the
# example is left as it was drawn, valid and labelled so (every label is the acceptor's).
SPLICE_TRIES = 48


def _transitions() -> np.ndarray:
  """[9, 7] acceptor table: node x letter -> next node, DEAD when the letter is not allowed."""
  table = np.full((DEAD + 1, len(LETTERS)), DEAD, np.int32)
  for node in range(END):
    for letter, nxt in BRANCHES[node]:
      table[node, letter] = nxt
  return table


TRANSITIONS = _transitions()

DEFAULTS = dict(seq_len=50, hidden_size=250, num_steps=10000, batch_size=100, learning_rate=1e-3)
OPTIONS = (DATA_RULES_OPTION,)


def accepts(letters, lengths):
  """[B] bool: the grammar accepts letters[b, :lengths[b]] (ints; anything past is ignored)."""
  table = jnp.asarray(TRANSITIONS)

  def step(node, inputs):
    t, letter = inputs
    nxt = table[node, jnp.clip(letter, 0, len(LETTERS) - 1)]
    return jnp.where(t < lengths, nxt, node), None

  T = letters.shape[1]
  node, _ = jax.lax.scan(step, jnp.zeros(letters.shape[:1], jnp.int32),
                         (jnp.arange(T), letters.T))
  return node == END


def make(seq_len: int = DEFAULTS["seq_len"], data_rules: str = "paper") -> Task:
  if isinstance(seq_len, int) and not isinstance(seq_len, bool) and seq_len < SHORTEST:
    # the minimum comes from the grammar, so say where it comes from
    raise OptionError("seq_len", seq_len, f"must be an int >= {SHORTEST} for reber (the shortest "
                      f"valid strings, BTXSE and BPVVE, have {SHORTEST} letters)")
  T = check_int("reber", "seq_len", seq_len, SHORTEST)
  authors = check_choice(DATA_RULES_OPTION, data_rules) == "authors"
  branches = jnp.asarray(BRANCHES)
  to_finish = jnp.asarray(TO_FINISH)

  def walk(key, batch_size):
    def step(node, inputs):
      t, k = inputs
      fits = 1 + to_finish[branches[node, :, 1]] <= T - t                 # [B, 2]
      coin = jax.random.bernoulli(k, 0.5, node.shape)
      choice = jnp.where(fits[:, 0] & fits[:, 1], coin.astype(jnp.int32),
                         jnp.where(fits[:, 0], 0, 1))
      letter = branches[node, choice, 0]
      return branches[node, choice, 1], letter

    keys = jax.random.split(key, T)
    _, letters = jax.lax.scan(step, jnp.zeros((batch_size,), jnp.int32), (jnp.arange(T), keys))
    letters = letters.T                                                  # [B, T], -1 past the end
    return letters, jnp.sum(letters >= 0, axis=1).astype(jnp.int32)

  def substituted(keys, letters, lengths):
    """The paper's corruption: one letter after the first B changed (on a fair coin each)."""
    kc, kp, kl = keys
    batch_size = letters.shape[0]
    corrupt = jax.random.bernoulli(kc, 0.5, (batch_size,))
    pos = jax.random.randint(kp, (batch_size,), 1, lengths)              # never the first B
    shift = jax.random.randint(kl, (batch_size,), 1, len(LETTERS))       # a different letter
    old = jnp.take_along_axis(letters, pos[:, None], axis=1)[:, 0]
    new = (old + shift) % len(LETTERS)
    hit = corrupt[:, None] & (jnp.arange(T)[None, :] == pos[:, None])
    return jnp.where(hit, new[:, None], letters), lengths

  def spliced(key, letters_BxT, lengths_B):
    """The authors' corruption: on a fair coin each, a prefix of the string followed by a suffix
    of another walk, the first of SPLICE_TRIES candidates that is invalid and fits in T."""
    kc, kw, kj, kk = jax.random.split(key, 4)
    K, batch_size = SPLICE_TRIES, letters_BxT.shape[0]
    corrupt = jax.random.bernoulli(kc, 0.5, (batch_size,))
    donors, donor_len = walk(kw, K * batch_size)
    donors_KxBxT = donors.reshape(K, batch_size, T)
    donor_len_KxB = donor_len.reshape(K, batch_size)
    cut = jax.random.randint(kj, (K, batch_size), 0, lengths_B[None, :])  # prefix letters kept
    start = jax.random.randint(kk, (K, batch_size), 0, donor_len_KxB)     # suffix's first letter
    t = jnp.arange(T)[None, None, :]
    source = jnp.clip(t - cut[..., None] + start[..., None], 0, T - 1)
    suffix = jnp.take_along_axis(donors_KxBxT, source, axis=2)
    length_KxB = cut + donor_len_KxB - start
    cand_KxBxT = jnp.where(t < cut[..., None], letters_BxT[None],
                           jnp.where(t < length_KxB[..., None], suffix, -1))
    valid = accepts(cand_KxBxT.reshape(K * batch_size, T), length_KxB.reshape(-1))
    usable = (length_KxB <= T) & ~valid.reshape(K, batch_size)
    first = jnp.argmax(usable, axis=0)
    pick = jnp.arange(batch_size)
    new, new_len = cand_KxBxT[first, pick], length_KxB[first, pick]
    corrupt = corrupt & jnp.any(usable, axis=0)   # none usable (see SPLICE_TRIES): left valid
    return (jnp.where(corrupt[:, None], new, letters_BxT),
            jnp.where(corrupt, new_len, lengths_B).astype(jnp.int32))

  def sample(key, batch_size):
    if authors:
      kw, kc = jax.random.split(key)
      letters, lengths = spliced(kc, *walk(kw, batch_size))
    else:  # the key is split as before data_rules existed: the same key, the same batch
      kw, *keys = jax.random.split(key, 4)
      letters, lengths = substituted(keys, *walk(kw, batch_size))
    xs = jax.nn.one_hot(letters, len(LETTERS), dtype=jnp.float32)        # -1 -> all zeros
    ys = accepts(letters, lengths).astype(jnp.int32)
    return Batch(xs=xs, ys=ys, lengths=lengths)

  def losses(logits, batch):
    return {"loss": softmax_cross_entropy(logits, batch.ys),
            "accuracy": accuracy(logits, batch.ys)}

  return Task(name="reber", input_size=len(LETTERS), output_size=2, per_step=False,
              classification=True, sample=sample, held_out=sample, losses=losses, seq_len=T)

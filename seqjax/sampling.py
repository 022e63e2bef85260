"""Text from a trained character-level language model (a `text` run): the prime read with the
state carried, then one byte at a time drawn from softmax(logits / temperature) and fed back.

  model = sampling.load("runs/text-lstm-T100-s0", "best")
  for byte in sampling.generate(model, b"ROMEO:", 200, temperature=0.8, seed=0): ...

The same (model, prime, length, temperature, seed) give the same bytes.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import models
from seqjax.cells.base import Cell
from seqjax.settings import RunError
from seqjax.workdir import load as load_run


class Model(NamedTuple):
  cell: Cell
  params: Any
  vocabulary: np.ndarray  # uint8 [V]: token i is byte vocabulary[i]
  workdir: str


def load(workdir: str, which: str = "best") -> Model:
  """The model of a trained text run (`which`: its best or last checkpoint); a RunError for a
  run of another task."""
  s, tcfg, params = load_run(workdir, which)
  if tcfg.task.stream is None:
    raise RunError(f"--workdir={workdir}: a run of the {s.task} task; sampling needs a text run")
  vocab = np.asarray(tcfg.task.stream.info["vocabulary"], np.uint8)
  return Model(tcfg.cell, params, vocab, workdir)


def check_prime(model: Model, prime: bytes) -> None:
  """A RunError unless the prime is non-empty and all its bytes are in the run's vocabulary."""
  if not prime:
    raise RunError("--prime: give at least one character (the model needs an input to start "
                   "from)")
  outside = sorted(set(prime) - set(model.vocabulary.tolist()))
  if outside:
    raise RunError(f"--prime={prime.decode('utf-8', 'replace')!r}: bytes "
                   f"{', '.join(repr(bytes([b]))[1:] for b in outside)} are not in the run's "
                   f"vocabulary ({len(model.vocabulary)} bytes seen in its corpus)")


# Jitted once per (cell, vocabulary size): a model's params are arguments, so generating again,
# from another prime or at another temperature, reuses the compiled steps.
@functools.partial(jax.jit, static_argnames=("cell", "vocab_size"))
def _read(cell, vocab_size, params, tokens_T):
  """The prime read from the initial state: (state after it, logits [V] of the next byte)."""
  state = cell.initial_state(params["cell"], (1,))
  xs = jax.nn.one_hot(tokens_T[None], vocab_size, dtype=jnp.float32)
  state, logits = models.apply_from(cell, params, xs, state)
  return state, logits[0, -1]


@functools.partial(jax.jit, static_argnames=("cell", "vocab_size"))
def _draw(cell, vocab_size, params, state, logits_V, key, temperature):
  """One byte drawn from softmax(logits / temperature) and fed back: (state, next logits, token)."""
  token = jax.random.categorical(key, logits_V / temperature)
  x = jax.nn.one_hot(token[None], vocab_size, dtype=jnp.float32)
  state, h = cell.step(params["cell"], state, x)
  return state, models.readout(params, h)[0], token


def generate(model: Model, prime: bytes, length: int, temperature: float = 1.0, seed: int = 0):
  """Yields `length` bytes (each a bytes of length 1) following `prime`, as they are drawn: the
  i-th from jax.random.fold_in(jax.random.key(seed), i)."""
  check_prime(model, prime)
  if not temperature > 0:
    raise RunError(f"--temperature={temperature}: must be a number > 0")
  tokens = np.searchsorted(model.vocabulary, np.frombuffer(prime, np.uint8))
  cell, params, V = model.cell, model.params, len(model.vocabulary)
  state, logits = _read(cell, V, params, jnp.asarray(tokens, jnp.int32))
  key = jax.random.key(seed)
  for i in range(length):
    state, logits, token = _draw(cell, V, params, state, logits, jax.random.fold_in(key, i),
                                 temperature)
    yield bytes([int(model.vocabulary[int(token)])])

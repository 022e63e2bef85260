"""Text from a trained character-level language model (a `text` run): the prime read with the
state carried, then one byte at a time drawn from softmax(logits / temperature) and fed back.

  model = sampling.load("runs/text-lstm-T100-s0", "best")
  for byte in sampling.generate(model, b"ROMEO:", 200, temperature=0.8, seed=0): ...

The same (model, prime, length, temperature, seed) give the same bytes.
"""

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


def _one_hot(model, tokens):
  return jax.nn.one_hot(tokens, len(model.vocabulary), dtype=jnp.float32)


def generate(model: Model, prime: bytes, length: int, temperature: float = 1.0, seed: int = 0):
  """Yields `length` bytes (each a bytes of length 1) following `prime`, as they are drawn."""
  check_prime(model, prime)
  if not temperature > 0:
    raise RunError(f"--temperature={temperature}: must be a number > 0")
  tokens = np.searchsorted(model.vocabulary, np.frombuffer(prime, np.uint8))
  cell, params = model.cell, model.params

  @jax.jit
  def read(tokens):
    state = cell.initial_state(params["cell"], (1,))
    state, logits = models.apply_from(cell, params, _one_hot(model, tokens[None]), state)
    return state, logits[0, -1]

  @jax.jit
  def draw(state, logits, key):
    token = jax.random.categorical(key, logits / temperature)
    state, h = cell.step(params["cell"], state, _one_hot(model, token[None]))
    return state, models.readout(params, h)[0], token

  state, logits = read(jnp.asarray(tokens, jnp.int32))
  key = jax.random.key(seed)
  for i in range(length):
    state, logits, token = draw(state, logits, jax.random.fold_in(key, i))
    yield bytes([int(model.vocabulary[int(token)])])

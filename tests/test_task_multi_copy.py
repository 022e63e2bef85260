"""The multi_copy task: each segment is copy's batch for its own key, losses over the whole
sequence, its --num_segments setting, and one tiny run through the launcher."""

import json
import math

import jax
import numpy as np
import pytest

from seqjax import experiment, report
from seqjax.settings import Settings
from seqjax.tasks import OptionError, multi_copy
from task_helpers import (cached_task, check_losses, cross_entropy, logits_with_mistakes,
                          refused)

S = 10


def _sample(T, R, n, seed):
  _, sampler = cached_task("multi_copy", seq_len=T, num_segments=R)
  return jax.tree.map(np.asarray, sampler(jax.random.key(seed), n))


@pytest.mark.parametrize("T,R", [(2, 1), (6, 3)])
def test_each_segment_is_copys_batch_for_its_own_key(T, R):
  n, L = 64, 2 * S + T
  batch = _sample(T, R, n, seed=5)
  assert batch.xs.shape == (n, R * L, 9) and batch.ys.shape == (n, R * L)
  assert batch.lengths is None
  _, copy_sampler = cached_task("copy", seq_len=T)
  for r, key in enumerate(jax.random.split(jax.random.key(5), R)):
    one = copy_sampler(key, n)
    np.testing.assert_array_equal(batch.xs[:, r * L:(r + 1) * L], np.asarray(one.xs))
    np.testing.assert_array_equal(batch.ys[:, r * L:(r + 1) * L], np.asarray(one.ys))


def test_segments_have_copys_layout_and_are_drawn_independently():
  T, R, n = 6, 3, 256
  L = 2 * S + T
  batch = _sample(T, R, n, seed=1)
  shown = batch.xs.argmax(axis=-1).reshape(n, R, L)
  ys = batch.ys.reshape(n, R, L)
  positions = np.zeros((n, R), int)
  for b in range(n):
    for r in range(R):
      x, y = shown[b, r], ys[b, r]
      (p,) = np.flatnonzero(x == 8)                  # one delimiter per segment
      assert S <= p <= S + T - 2
      positions[b, r] = p
      assert (x[:S] <= 6).all()
      assert (np.delete(x[S:], p - S) == 7).all()
      expected = np.full(L, 7)
      expected[p + 1:p + 1 + S] = x[:S]
      np.testing.assert_array_equal(y, expected)
  symbols = shown[:, :, :S]
  # different segments differ: their symbols agree about as often as chance (1/7)
  for r, q in ((0, 1), (1, 2), (0, 2)):
    same = np.mean(symbols[:, r] == symbols[:, q])
    assert abs(same - 1 / 7) < 0.03, (r, q, same)
    assert not np.array_equal(positions[:, r], positions[:, q])
  # and independently: the delimiter positions of two segments are uncorrelated
  corr = np.corrcoef(positions[:, 0], positions[:, 1])[0, 1]
  assert abs(corr) < 0.2 and set(positions.ravel()) == set(range(S, S + T - 1))


def test_losses_perfect_uniform_and_memoryless_predictions():
  T, R, n = 6, 3, 4
  L = 2 * S + T
  task, _ = cached_task("multi_copy", seq_len=T, num_segments=R)
  assert (task.input_size, task.output_size, task.per_step, task.seq_len) == (9, 8, True, R * L)
  batch = _sample(T, R, n, seed=2)
  keys = {"accuracy", "bits_per_step"}
  perfect = 30.0 * np.eye(8, dtype=np.float32)[batch.ys]
  values = check_losses(task, perfect, batch, keys)
  np.testing.assert_allclose(values["accuracy"], 1.0)
  assert (values["bits_per_step"] < 1e-9).all()
  uniform = check_losses(task, np.zeros((n, R * L, 8), np.float32), batch, keys)
  np.testing.assert_allclose(uniform["bits_per_step"], 3.0, rtol=1e-6)   # log2(8) every step
  # knows when to recall but not what: uniform over the 7 symbols there, sure "blank" elsewhere
  recall = batch.ys != 7
  memoryless = np.where(recall[..., None], np.r_[np.zeros(7), -1e9], 30.0 * np.eye(8)[7])
  values = check_losses(task, memoryless.astype(np.float32), batch, keys)
  np.testing.assert_allclose(values["bits_per_step"], S * math.log2(7) / L, rtol=1e-5)


def test_losses_average_over_all_recalled_symbols_and_steps():
  T, R, n = 6, 3, 3
  task, _ = cached_task("multi_copy", seq_len=T, num_segments=R)
  batch = _sample(T, R, n, seed=3)
  recall = batch.ys != 7         # the S steps after each delimiter (symbols 0..6)
  assert (recall.sum(axis=1) == R * S).all()
  wrong = np.zeros(batch.ys.shape, bool)
  wrong[0, np.flatnonzero(recall[0])[[0, S + 3, 2 * S + 9]]] = True  # one per segment
  wrong[1, np.flatnonzero(recall[1])[S:S + 4]] = True                  # four in segment 2
  wrong[2, np.flatnonzero(~recall[2])[:5]] = True                      # blanks only
  logits = logits_with_mistakes(batch.ys, wrong, 8, seed=4)
  values = check_losses(task, logits, batch, {"accuracy", "bits_per_step"})
  np.testing.assert_allclose(values["accuracy"], [1 - 3 / (R * S), 1 - 4 / (R * S), 1.0],
                             rtol=1e-6)
  np.testing.assert_allclose(values["loss"], cross_entropy(logits, batch.ys).mean(axis=1),
                             rtol=1e-5)
  np.testing.assert_allclose(values["bits_per_step"], values["loss"] / math.log(2), rtol=1e-6)


def test_report_judges_multi_copy_by_bits_per_step():
  task, _ = cached_task("multi_copy", seq_len=6, num_segments=2)
  assert report.main_metric(task) == "bits_per_step"
  assert report.threshold("multi_copy", 20) == ("bits_per_step", "below", 0.1)
  assert report.threshold("multi_copy", 1000) == ("bits_per_step", "below", 0.01)
  # the rule sits below what a memoryless model scores: S log2(7) / (2S + T)
  assert 0.1 < S * math.log2(7) / (2 * S + 100) and 0.01 < S * math.log2(7) / (2 * S + 1000)


def test_defaults_and_make_checks():
  assert multi_copy.DEFAULTS == dict(seq_len=20, hidden_size=250, num_steps=50000,
                                     batch_size=100, learning_rate=1e-3)
  assert multi_copy.NUM_SEGMENTS == 3
  for options, message in ((dict(num_segments=0), "num_segments=0: must be an int >= 1"),
                           (dict(num_segments=2.0), "num_segments=2.0: must be an int >= 1"),
                           (dict(seq_len=1), "seq_len=1: must be an int >= 2")):
    with pytest.raises(OptionError, match=message):
      multi_copy.make(**options)


@pytest.mark.parametrize("settings,message", [
    (dict(task="multi_copy", num_segments=0), "--num_segments=0: must be an integer >= 1"),
    (dict(task="multi_copy", num_segments=True), "--num_segments=True: must be an integer >= 1"),
    (dict(task="copy", num_segments=2), "--num_segments=2: applies only to the multi_copy task"),
])
def test_bad_num_segments_is_one_line_and_writes_nothing(settings, message, tmp_path):
  assert refused(tmp_path, **settings) == message


def test_num_segments_is_recorded_and_named_for_multi_copy_only():
  s = Settings(task="multi_copy", task_options=dict(num_segments=2)).resolved()
  assert s.workdir == "runs/multi_copy-R2-rwa-T20-s0"
  assert s.recorded()["num_segments"] == 2
  assert "num_segments" not in Settings(task="copy").resolved().recorded()
  assert Settings(task="copy").resolved().workdir == "runs/copy-rwa-T100-s0"


def test_a_tiny_multi_copy_run_writes_bits_per_step(tmp_path):
  workdir = tmp_path / "run"
  rows = experiment.run(Settings(task="multi_copy", seq_len=4, task_options=dict(num_segments=2),
                                 hidden_size=8,
                                 batch_size=4, num_steps=2, eval_every=1, eval_size=8,
                                 model="rwa", workdir=str(workdir)), log=lambda line: None)
  written = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in written] == [0, 1, 2] and written == rows[str(workdir)]
  for row in written:
    assert 0 < row["eval_bits_per_step"] < 3.5 and 0 <= row["eval_accuracy"] <= 1
    assert row["eval_bits_per_step"] == pytest.approx(row["eval_loss"] / math.log(2), rel=1e-5)
  config = json.loads((workdir / "config.json").read_text())
  assert config["num_segments"] == 2 and config["task"] == "multi_copy"
  assert "data_rules" not in config

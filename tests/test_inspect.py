"""`seqjax.introspect` (what `launch.inspect` draws) against NumPy float64 recomputations: the
unit ranking rule, the RWA's per-step shares of n/d, the attention readout's weights; and the
pictures of tiny trained runs, alone and side by side."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import serialization

from helpers import loop, random_params
from seqjax import cells, experiment, introspect, models, plots, tasks, train
from seqjax.tasks import variable_copy
from task_helpers import ROOT

PNG = b"\x89PNG\r\n\x1a\n"


def _ranking_oracle(hs, steps):
  """The rule in plain NumPy: score_j = mean over the listed steps t >= 1 of every sequence of
  |h[t, j] - h[t-1, j]|; units by decreasing score, ties by index."""
  hs = np.asarray(hs, np.float64)
  rows = [np.abs(hs[n, t] - hs[n, t - 1]) for n in range(len(hs)) for t in steps[n]
          if 1 <= t < hs.shape[1]]
  score = np.mean(rows, axis=0)
  return sorted(range(hs.shape[2]), key=lambda j: (-score[j], j)), score


def test_rank_units_follows_the_rule():
  rng = np.random.default_rng(0)
  hs = rng.normal(size=(3, 9, 6)).astype(np.float32)
  hs[:, 4, 2] += 5.0     # unit 2 jumps at step 4 ...
  hs[:, 5, 2] -= 5.0     # ... and back at 5: it must win when 4 is a listed step
  steps = [[4, 7], [0, 4], [4, 9]]   # 0 and 9 (= T) are not usable steps
  expected, score = _ranking_oracle(hs, steps)
  np.testing.assert_allclose(introspect.unit_movement(hs, steps), score, rtol=1e-6)
  np.testing.assert_array_equal(introspect.rank_units(hs, steps), expected)
  assert expected[0] == 2
  every = [list(range(9))] * 3
  np.testing.assert_array_equal(introspect.rank_units(hs, [None] * 3),
                                _ranking_oracle(hs, every)[0])


def _rwa_shares_oracle(params, xs, lengths):
  """The RWA in float64, literally: a_t from h_{t-1}; share of step t in n/d after L steps is
  e^{a_t} / sum_{i<L} e^{a_i} (per unit)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  B, T, _ = xs.shape
  out = np.zeros((B, T, p["s0"].shape[0]))
  for b in range(B):
    h, n, d, a_all = np.tanh(p["s0"]), 0.0, 0.0, []
    for t in range(lengths[b]):
      x = np.asarray(xs[b, t], np.float64)
      u = x @ p["W_u"] + p["b_u"]
      g = x @ p["W_gx"] + h @ p["W_gh"] + p["b_g"]
      a = x @ p["W_ax"] + h @ p["W_ah"]
      n, d = n + u * np.tanh(g) * np.exp(a), d + np.exp(a)
      h = np.tanh(n / d)
      a_all.append(a)
    a_all = np.array(a_all)
    out[b, :lengths[b]] = np.exp(a_all) / np.exp(a_all).sum(axis=0)
  return out


def test_rwa_step_shares_are_the_weights_of_its_average():
  cell = cells.rwa(5)
  params = random_params(cell.init(jax.random.key(0), 3), jax.random.key(1), scale=1.0)
  xs = jax.random.normal(jax.random.key(2), (3, 8, 3))
  lengths = np.array([8, 3, 1])
  shares = np.asarray(introspect.step_shares(cell, params, xs, lengths))
  assert shares.shape == (3, 8, 5)
  np.testing.assert_allclose(shares, _rwa_shares_oracle(params, xs, lengths), rtol=2e-5,
                             atol=1e-7)
  np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-5)
  assert (shares[1, 3:] == 0).all() and (shares[2, 0] == 1).all()
  # without lengths: every sequence is read at its last step T
  full = np.asarray(introspect.step_shares(cell, params, xs))
  np.testing.assert_allclose(full, _rwa_shares_oracle(params, xs, [8, 8, 8]), rtol=2e-5,
                             atol=1e-7)
  with pytest.raises(ValueError, match="'lstm' keeps no weighted average"):
    introspect.step_shares(cells.lstm(4), cells.lstm(4).init(jax.random.key(0), 3), xs)


def test_readout_attention_is_the_softmax_of_the_last_query():
  rng = np.random.default_rng(1)
  H, T = 4, 6
  readout = {k: rng.normal(size=(H, H)).astype(np.float32) for k in ("W_q", "W_k", "W_v")}
  hs = rng.normal(size=(3, T, H)).astype(np.float32)
  lengths = np.array([6, 4, 0])
  alpha = np.asarray(models.last_step_attention({"readout": readout}, hs, lengths))
  assert (alpha[2] == 0).all()  # length 0: no last step, no weights
  np.testing.assert_allclose(  # no lengths: every step valid
      np.asarray(models.last_step_attention({"readout": readout}, hs[:1])), alpha[:1], rtol=1e-6)
  for b, L in enumerate(lengths[:2]):
    h = hs[b].astype(np.float64)
    scores = (h[L - 1] @ readout["W_q"]) @ (h[:L] @ readout["W_k"]).T / np.sqrt(H)
    expected = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose(alpha[b, :L], expected, rtol=1e-5)
    assert (alpha[b, L:] == 0).all()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Tiny trained runs: rwa and lstm on adding T=12 (same seed: same held-out sequences), and an
  lstm on adding T=9 (another length)."""
  root = tmp_path_factory.mktemp("runs")
  out = {}
  for name, model, T in (("rwa", "rwa", 12), ("lstm", "lstm", 12), ("short", "lstm", 9)):
    cfg = experiment.Settings(model=model, task="adding", seq_len=T, hidden_size=6,
                               batch_size=8, num_steps=2, eval_every=2, eval_size=16,
                               workdir=str(root / name))
    experiment.run(cfg, log=lambda line: None)
    out[name] = str(root / name)
  return out


def _markers(xs):
  return [list(np.nonzero(np.asarray(x[:, 1]))[0]) for x in xs]


def _check_run(workdir, described, n):
  """The run's ranking against the oracle on hs from the literal step loop."""
  cfg, tcfg, params = experiment.load(workdir)
  held = tcfg.task.held_out(train.eval_key(cfg.seed), cfg.eval_size)
  xs = np.asarray(held.xs[:n])
  _, hs = loop(tcfg.cell, params["cell"], xs)
  expected, _ = _ranking_oracle(np.asarray(hs), _markers(xs))
  np.testing.assert_array_equal(described["units"], expected)
  np.testing.assert_allclose(described["hs"], hs, rtol=1e-5, atol=1e-6)
  return tcfg, params, held


@pytest.mark.slow
def test_one_run_picture_and_its_ranking(runs):
  described, written = introspect.inspect_runs([runs["rwa"]], num_examples=3, top_units=4)
  path = os.path.join(runs["rwa"], "states.png")
  assert written == [path]
  with open(path, "rb") as f:
    assert f.read(8) == PNG
  run = described[runs["rwa"]]
  tcfg, params, held = _check_run(runs["rwa"], run, 3)
  np.testing.assert_array_equal(run["shown"], run["units"][:4])
  # the strip is the RWA's share of each step, averaged over the shown units
  shares = np.asarray(introspect.step_shares(tcfg.cell, params["cell"], held.xs[:3]))
  np.testing.assert_allclose(run["strip"], shares[:, :, run["shown"]].mean(-1), rtol=1e-6)


@pytest.mark.slow
def test_runs_side_by_side_with_an_attention_readout(runs, tmp_path):
  output = str(tmp_path / "side.png")
  described, written = introspect.inspect_runs([runs["rwa"], runs["lstm"]], output,
                                               num_examples=2, top_units=3)
  assert written[0] == output
  with open(output, "rb") as f:
    assert f.read(8) == PNG
  for name in ("rwa", "lstm"):
    _check_run(runs[name], described[runs[name]], 2)
  # the lstm's strip: mean |Δh| of its shown units
  lstm = described[runs["lstm"]]
  hs = lstm["hs"][:, :, lstm["shown"]]
  np.testing.assert_allclose(lstm["strip"][:, 1:], np.abs(np.diff(hs, axis=1)).mean(-1),
                             rtol=1e-6)
  # an attention-readout run, made here from the lstm's params: its strip is alpha_{T,i}
  cfg, tcfg, params = experiment.load(runs["lstm"])
  rng = np.random.default_rng(0)
  H = tcfg.cell.hidden_size
  with_attention = {"cell": params["cell"], "readout": {
      **{k: rng.normal(size=(H, H)).astype(np.float32) for k in ("W_q", "W_k", "W_v")},
      "W": rng.normal(size=(2 * H, 1)).astype(np.float32), "b": np.zeros(1, np.float32)}}
  held = tcfg.task.held_out(train.eval_key(cfg.seed), cfg.eval_size)
  few = jax.tree.map(lambda v: v[:2], held)
  attention = introspect.describe(tcfg.cell, with_attention, tcfg.task, few, 3)
  np.testing.assert_allclose(attention["strip"], models.last_step_attention(
      with_attention, attention["hs"]), rtol=1e-6)
  np.testing.assert_allclose(attention["strip"].sum(-1), 1.0, rtol=1e-5)
  marks = [introspect.landmarks("adding", few, b) for b in range(2)]
  three = str(tmp_path / "three.png")
  plots.hidden_states([("rwa", described[runs["rwa"]]), ("lstm", lstm),
                      ("lstm + attention", attention)], marks, three, "three runs")
  with open(three, "rb") as f:
    assert f.read(8) == PNG


def test_runs_of_different_lengths_are_refused_in_one_line(runs, tmp_path):
  with pytest.raises(experiment.RunError) as error:
    introspect.inspect_runs([runs["rwa"], runs["short"]], str(tmp_path / "x.png"))
  message = str(error.value)
  assert "--seq_len=9" in message and "--seq_len=12" in message and "\n" not in message
  assert not (tmp_path / "x.png").exists()


def test_runs_trained_on_other_data_are_refused_in_one_line(tmp_path):
  # same task and length, but the other bit order: drawn on the first run's sequences, the
  # second would be read backwards
  for order in ("lsb_first", "msb_first"):
    experiment.run(experiment.Settings(model="lstm", task="binary_addition", seq_len=4,
                                       task_options=dict(bit_order=order), hidden_size=4,
                                       batch_size=8, num_steps=1,
                                       eval_every=1, eval_size=8, workdir=str(tmp_path / order)),
                   log=lambda line: None)
  with pytest.raises(experiment.RunError) as error:
    introspect.inspect_runs([str(tmp_path / "lsb_first"), str(tmp_path / "msb_first")],
                            str(tmp_path / "x.png"))
  message = str(error.value)
  assert "--bit_order=msb_first" in message and "--bit_order=lsb_first" in message
  assert "\n" not in message and not (tmp_path / "x.png").exists()


def test_load_opens_a_run_on_a_host_with_more_devices(runs, monkeypatch):
  # batch 8 on a host with 16 devices: no mesh is needed to run a trained model
  monkeypatch.setattr(jax, "local_device_count", lambda *a, **k: 16)
  cfg, _, params = experiment.load(runs["lstm"])
  assert cfg.batch_size == 8 and cfg.num_devices == 1
  want = serialization.msgpack_restore(open(os.path.join(runs["lstm"], "checkpoint.msgpack"),
                                            "rb").read())["params"]
  np.testing.assert_array_equal(params["readout"]["W"], want["readout"]["W"])


@pytest.mark.slow
def test_the_cli_draws_runs_side_by_side_and_names_bad_flags(runs, tmp_path):
  output = tmp_path / "cli.png"
  out = subprocess.run([sys.executable, "-m", "launch.inspect",
                        f"--workdirs={runs['rwa']},{runs['lstm']}", f"--output={output}",
                        "--num_examples=2", "--top_units=3"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert output.read_bytes()[:8] == PNG and str(output) in out.stdout
  for flags_, message in [([f"--workdir={runs['rwa']}", f"--workdirs={runs['lstm']}"],
                           "exactly one of --workdir"),
                          ([f"--workdirs={runs['rwa']},{runs['rwa']}"], "listed twice"),
                          ([f"--workdir={runs['rwa']}", "--top_units=0"], "--top_units=0")]:
    out = subprocess.run([sys.executable, "-m", "launch.inspect", *flags_], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr


def test_copy_landmarks_mark_each_segment_of_multi_copy():
  S, T, R = 10, 4, 3
  batch = tasks.get("multi_copy", seq_len=T, num_segments=R).sample(jax.random.key(3), 2)
  one = tasks.get("copy", seq_len=T).sample(jax.random.key(4), 1)
  xs = np.asarray(batch.xs)
  for b in range(2):
    delims = np.nonzero(xs[b, :, variable_copy.DELIMITER])[0]
    assert len(delims) == R
    for k, p in enumerate(delims):  # each delimiter inside its own segment of length 2S + T
      assert k * (2 * S + T) + S <= p < (k + 1) * (2 * S + T)
    want = [m for k, p in enumerate(delims) for m in ((k * (2 * S + T) + S - 0.5, "symbols shown"),
                                                      (p, "delimiter"), (p + S + 0.5, "recalled"))]
    assert introspect.landmarks("multi_copy", batch, b) == want
    assert introspect.event_steps("multi_copy", batch, b) == [
        t for k, p in enumerate(delims) for t in list(range(k * (2 * S + T), k * (2 * S + T) + S))
        + [int(p)]]
  p = int(np.argmax(np.asarray(one.xs[0, :, variable_copy.DELIMITER])))  # copy: as before
  assert introspect.landmarks("copy", one, 0) == [(S - 0.5, "symbols shown"), (p, "delimiter"),
                                                  (p + S + 0.5, "recalled")]
  assert introspect.event_steps("copy", one, 0) == list(range(S)) + [p]

"""seqjax.bidirectional: torch's bidirectional modules (their documented equations in NumPy
float64, and torch itself when installed), round trips of their weights, and flax's
nn.Bidirectional / nnx.Bidirectional over LinenRNN / NnxRNN."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import cells
from seqjax.interop import LinenRNN, NnxRNN, from_torch, to_torch
from helpers import assert_trees_close, random_params
from test_torch_weights import GATES, torch_forward

B, T, F, H = 3, 6, 3, 4
LENGTHS = [T, 2, 1]


def bi_state_dict(kind, num_layers, seed=0):
  """Random weights with a bidirectional torch module's key names and shapes."""
  rng, G, sd = np.random.default_rng(seed), GATES[kind], {}
  for k in range(num_layers):
    for suffix in ("", "_reverse"):
      sd[f"weight_ih_l{k}{suffix}"] = rng.normal(0, 0.5, (G * H, F if k == 0 else 2 * H))
      sd[f"weight_hh_l{k}{suffix}"] = rng.normal(0, 0.5, (G * H, H))
      sd[f"bias_ih_l{k}{suffix}"] = rng.normal(0, 0.5, G * H)
      sd[f"bias_hh_l{k}{suffix}"] = rng.normal(0, 0.5, G * H)
  return sd


def bi_forward(kind, sd, xs, lengths):
  """torch's bidirectional module on packed sequences, in float64: per sequence and layer, the
  forward direction over its valid steps and the reverse one over them backwards, outputs
  concatenated and zero-padded to T (pad_packed_sequence). Returns (output, h_n [L·2, B, H])."""
  num_layers = 1 + max(int(k.split("_l")[1].split("_")[0]) for k in sd)
  out, h_n = [], np.zeros((num_layers * 2, len(lengths), H))
  for b, L in enumerate(lengths):
    x = np.asarray(xs[b:b + 1, :L], np.float64)
    for k in range(num_layers):
      one = {d: {f"{name}_l0": sd[f"{name}_l{k}{d}"]
                 for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
             for d in ("", "_reverse")}
      fwd = torch_forward(kind, one[""], x)
      bwd = torch_forward(kind, one["_reverse"], x[:, ::-1])[:, ::-1]
      if L:
        h_n[2 * k, b], h_n[2 * k + 1, b] = fwd[0, -1], bwd[0, 0]
      x = np.concatenate([fwd, bwd], axis=-1)
    out.append(np.concatenate([x[0], np.zeros((xs.shape[1] - L, 2 * H))]))
  return np.stack(out), h_n


@pytest.mark.parametrize("kind, num_layers", [("lstm", 2), ("gru", 1), ("rnn", 3)])
def test_from_torch_bidirectional_computes_the_packed_torch_module(kind, num_layers):
  sd = bi_state_dict(kind, num_layers)
  bi, params = from_torch(kind, sd)
  assert isinstance(bi, seqjax.Bidirectional) and bi.num_layers == num_layers
  xs = np.random.default_rng(1).normal(size=(B, T, F))
  finals, hs = bi.apply(params, jnp.asarray(xs, jnp.float32), jnp.array(LENGTHS))
  want, h_n = bi_forward(kind, sd, xs, LENGTHS)
  np.testing.assert_allclose(hs, want, rtol=1e-5, atol=1e-5)
  got_h_n = np.stack([s.h for pair in finals for s in pair])
  valid = np.array(LENGTHS) > 0
  np.testing.assert_allclose(got_h_n[:, valid], h_n[:, valid], rtol=1e-5, atol=1e-5)
  # round trip: the same params back, the reverse direction under the _reverse keys
  back = to_torch(bi, params)
  assert set(back) == set(sd)
  assert_trees_close(from_torch(kind, back)[1], params, rtol=0, atol=0)


def test_two_cells_and_layers_equal_scans_composed_by_hand():
  bi = seqjax.bidirectional(cells.lstm(5), cells.gru(H), num_layers=2)
  params = random_params(bi.init(jax.random.key(0), F), jax.random.key(1))
  xs = jax.random.normal(jax.random.key(2), (B, T, F))
  lengths = jnp.array(LENGTHS)
  finals, hs = bi.apply(params, xs, lengths)
  assert hs.shape == (B, T, 5 + H) and params[1][0]["W_x"].shape == (5 + H, 4 * 5)
  x, want_finals = xs, []
  for p_f, p_b in params:
    s_f, h_f = seqjax.scan(cells.lstm(5), p_f, x, lengths=lengths)
    s_b, h_b = seqjax.scan(cells.gru(H), p_b, x, lengths=lengths, reverse=True)
    want_finals.append((s_f, s_b))
    x = jnp.concatenate([h_f, h_b], -1)
  assert_trees_close((finals, hs), (tuple(want_finals), x), rtol=0, atol=0)
  with pytest.raises(ValueError, match="params for 2 layers; this one has 1"):
    seqjax.bidirectional(cells.lstm(5), cells.gru(H)).apply(params, xs)


def test_torch_itself_bidirectional_packed_and_round_trip():
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  module = torch.nn.LSTM(F, H, num_layers=2, bidirectional=True, batch_first=True).double()
  bi, params = from_torch("lstm", module.state_dict())
  xs = np.random.default_rng(2).normal(size=(B, T, F))
  with torch.no_grad():
    out, _ = module(torch.from_numpy(xs))
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(xs), torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
    packed_out, (h_n, _) = module(packed)
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True,
                                                       total_length=T)
  np.testing.assert_allclose(bi.apply(params, jnp.asarray(xs, jnp.float32))[1], out.numpy(),
                             rtol=1e-5, atol=1e-5)
  finals, hs = bi.apply(params, jnp.asarray(xs, jnp.float32), jnp.array(LENGTHS))
  np.testing.assert_allclose(hs, padded.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.stack([s.h for pair in finals for s in pair]), h_n.numpy(),
                             rtol=1e-5, atol=1e-5)
  # a seqjax bidirectional's weights into a fresh torch module
  mine = seqjax.bidirectional(cells.gru(H), num_layers=2)
  params = random_params(mine.init(jax.random.key(0), F), jax.random.key(1))
  fresh = torch.nn.GRU(F, H, num_layers=2, bidirectional=True, batch_first=True)
  fresh.load_state_dict({k: torch.tensor(v) for k, v in to_torch(mine, params).items()})
  with torch.no_grad():
    out = fresh(torch.from_numpy(xs.astype(np.float32)))[0].numpy()
  np.testing.assert_allclose(mine.apply(params, jnp.asarray(xs, jnp.float32))[1], out,
                             rtol=1e-5, atol=1e-5)


def test_flax_bidirectional_over_linen_and_nnx_rnns_equals_seqjax_bidirectional():
  from flax import linen as nn
  from flax import nnx
  c_f, c_b = cells.lstm(H), cells.rwa(5)
  xs = jax.random.normal(jax.random.key(3), (B, T, F))
  lengths = jnp.array(LENGTHS)
  layer = nn.Bidirectional(LinenRNN(c_f), LinenRNN(c_b), return_carry=True)
  variables = layer.init(jax.random.key(0), xs)
  (carry_f, carry_b), hs = layer.apply(variables, xs, seq_lengths=lengths)
  v = variables["params"]
  params = ((v["forward_rnn"]["cell"], v["backward_rnn"]["cell"]),)
  finals, want = seqjax.bidirectional(c_f, c_b).apply(params, xs, lengths)
  assert_trees_close(((carry_f, carry_b), hs), (finals[0], want), rtol=1e-6, atol=1e-6)

  forward_rnn = NnxRNN(c_f, F, rngs=nnx.Rngs(0))
  backward_rnn = NnxRNN(c_b, F, rngs=nnx.Rngs(1))
  layer = nnx.Bidirectional(forward_rnn, backward_rnn, return_carry=True)
  (carry_f, carry_b), hs = layer(xs, seq_lengths=lengths)
  params = ((forward_rnn.get_params(), backward_rnn.get_params()),)
  finals, want = seqjax.bidirectional(c_f, c_b).apply(params, xs, lengths)
  assert_trees_close(((carry_f, carry_b), hs), (finals[0], want), rtol=1e-6, atol=1e-6)


def test_linen_rnn_takes_nn_rnns_direction_arguments():
  """time_major, reverse and keep_order as nn.RNN: reverse without keep_order returns the
  outputs in the order computed (each sequence's valid steps reversed)."""
  cell = cells.gru(H)
  xs = jax.random.normal(jax.random.key(4), (B, T, F))
  lengths = jnp.array(LENGTHS)
  rnn = LinenRNN(cell, reverse=True)
  variables = rnn.init(jax.random.key(0), xs)
  params = variables["params"]["cell"]
  _, kept = seqjax.scan(cell, params, xs, lengths=lengths, reverse=True)
  computed = rnn.apply(variables, xs, seq_lengths=lengths)
  for b, L in enumerate(LENGTHS):
    np.testing.assert_array_equal(computed[b, :L], kept[b, :L][::-1])
  np.testing.assert_array_equal(rnn.apply(variables, xs, seq_lengths=lengths, keep_order=True),
                                kept)
  time_major = rnn.apply(variables, jnp.swapaxes(xs, 0, 1), time_major=True, keep_order=True)
  np.testing.assert_allclose(jnp.swapaxes(time_major, 0, 1),
                             seqjax.scan(cell, params, xs, reverse=True)[1], rtol=1e-6)


def test_models_read_a_bidirectional_per_step_and_at_the_last_step():
  """Per step: the readout of each step's concatenated states; at the last step: the forward
  state after the last valid step with the reverse state after step 0 (torch's h_n)."""
  from seqjax import models
  bi = seqjax.bidirectional(cells.gru(H), cells.lstm(5))
  params = models.init(bi, jax.random.key(0), F, 2)
  xs = jax.random.normal(jax.random.key(1), (B, T, F))
  lengths = jnp.array(LENGTHS)
  finals, hs = bi.apply(params["cell"], xs, lengths)
  W, b = params["readout"]["W"], params["readout"]["b"]
  np.testing.assert_allclose(models.apply(bi, params, xs, lengths), hs @ W + b[None, None], rtol=1e-6,
                             atol=1e-6)
  (s_f, s_b), = finals
  last = jnp.concatenate([s_f.h, s_b.h], -1)  # length 0: both are the start state, 0
  np.testing.assert_allclose(models.apply(bi, params, xs, lengths, per_step=False), last @ W + b[None],
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="linear readout only"):
    models.init(bi, jax.random.key(0), F, 2, readout="attention")


def test_launcher_bidirectional_where_the_answer_follows_the_whole_input(tmp_path):
  from seqjax import experiment
  from seqjax.settings import Settings, default_workdir
  tiny = dict(model="gru", hidden_size=4, batch_size=4, num_steps=2, eval_every=2, eval_size=8)
  for task, reason in [
      ("adding", "refused on adding: its question is memory"),
      ("trajectory", "refused on trajectory: the reverse direction would read the future"),
      ("copy", "refused on copy: its question is memory")]:
    with pytest.raises(experiment.RunError, match=f"^--bidirectional=True: {reason}"):
      experiment.run(Settings(task=task, bidirectional=True, workdir=str(tmp_path / task),
                              **tiny), log=lambda line: None)
    assert not (tmp_path / task).exists()
  with pytest.raises(experiment.RunError, match="takes --readout=linear only"):
    experiment.run(Settings(task="reber", bidirectional=True, readout="attention",
                            workdir=str(tmp_path / "a"), **tiny), log=lambda line: None)
  with pytest.raises(experiment.RunError, match="takes no --dropout"):
    experiment.run(Settings(task="reber", bidirectional=True, dropout=0.1,
                            workdir=str(tmp_path / "d"), **tiny), log=lambda line: None)
  s = Settings(task="binary_addition", bidirectional=True, seed=0, **tiny).resolved()
  assert default_workdir(s).endswith("-gru-bi-T8-s0")
  experiment.run(Settings(task="binary_addition", bidirectional=True,
                          workdir=str(tmp_path / "ok"), **tiny), log=lambda line: None)
  config = json.loads((tmp_path / "ok" / "config.json").read_text())
  assert config["bidirectional"] is True

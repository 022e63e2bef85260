"""interop.from_torch / to_torch against torch's documented equations, written here in NumPy
float64 from the torch.nn.LSTM / GRU / RNN docs (torch itself is not needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import cells
from seqjax.interop import from_torch, to_torch
from helpers import assert_trees_close, random_params

B, T, F, H = 2, 5, 3, 4
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def sigmoid(v):
  return 1 / (1 + np.exp(-v))


def torch_state_dict(kind, num_layers, seed=0, hidden=H, bias=True):
  """Random weights with torch's key names and shapes."""
  rng, G, sd = np.random.default_rng(seed), GATES[kind], {}
  for k in range(num_layers):
    sd[f"weight_ih_l{k}"] = rng.normal(0, 0.5, (G * hidden, F if k == 0 else hidden))
    sd[f"weight_hh_l{k}"] = rng.normal(0, 0.5, (G * hidden, hidden))
    if bias:
      sd[f"bias_ih_l{k}"] = rng.normal(0, 0.5, G * hidden)
      sd[f"bias_hh_l{k}"] = rng.normal(0, 0.5, G * hidden)
  return sd


def torch_forward(kind, sd, xs):
  """torch.nn.<kind>(batch_first=True) in float64: xs [B, T, F] -> output [B, T, H] of the top
  layer, from zero h_0 (and c_0). Per layer, as documented (W_i* rows of weight_ih, etc.)."""
  num_layers = 1 + max(int(k.rsplit("_l", 1)[1]) for k in sd)
  out = np.asarray(xs, np.float64)
  for k in range(num_layers):
    W_ih, W_hh = sd[f"weight_ih_l{k}"], sd[f"weight_hh_l{k}"]
    b_ih = sd.get(f"bias_ih_l{k}", np.zeros(W_ih.shape[0]))
    b_hh = sd.get(f"bias_hh_l{k}", np.zeros(W_ih.shape[0]))
    Hk = W_hh.shape[1]
    h, c, hs = np.zeros((out.shape[0], Hk)), np.zeros((out.shape[0], Hk)), []
    for t in range(out.shape[1]):
      gi, gh = out[:, t] @ W_ih.T + b_ih, h @ W_hh.T + b_hh
      if kind == "lstm":   # i, f, g, o
        i, f, g, o = np.split(gi + gh, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
      elif kind == "gru":  # r, z, n
        (ir, iz, in_), (hr, hz, hn) = np.split(gi, 3, axis=-1), np.split(gh, 3, axis=-1)
        r, z = sigmoid(ir + hr), sigmoid(iz + hz)
        n = np.tanh(in_ + r * hn)
        h = (1 - z) * n + z * h
      else:
        h = np.tanh(gi + gh)
      hs.append(h)
    out = np.stack(hs, axis=1)
  return out


class FakeTensor:
  """Just the torch.Tensor methods from_torch may call (duck typing: torch is never imported)."""
  def __init__(self, array):
    self.array = array

  def detach(self):
    return self

  def cpu(self):
    return self

  def float(self):
    return FakeTensor(self.array.astype(np.float32))

  def numpy(self):
    return self.array


@pytest.mark.parametrize("kind", list(GATES))
@pytest.mark.parametrize("num_layers", [1, 2])
def test_from_torch_computes_the_torch_module(kind, num_layers):
  sd = torch_state_dict(kind, num_layers)
  tensors = {k: FakeTensor(v.astype(np.float32)) for k, v in sd.items()}
  cell, params = from_torch(kind, tensors)
  assert cell.hidden_size == H and len(cell.layers) == (num_layers if num_layers > 1 else 0)
  xs = np.random.default_rng(1).normal(size=(B, T, F))
  _, hs = seqjax.scan(cell, params, jnp.asarray(xs, jnp.float32))
  np.testing.assert_allclose(hs, torch_forward(kind, sd, xs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(GATES))
def test_round_trips(kind):
  sd = {k: v.astype(np.float32) for k, v in torch_state_dict(kind, 2).items()}
  back = to_torch(*from_torch(kind, sd))
  assert list(back) == list(sd)
  assert all(back[k].dtype == np.float32 and back[k].shape == sd[k].shape for k in sd)
  for k in sd:
    if kind == "gru" or k.startswith("weight"):
      np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    elif k.startswith("bias_ih"):  # the one summed bias b, written as bias_ih = b, bias_hh = 0
      hh = k.replace("_ih", "_hh")
      np.testing.assert_allclose(back[k], sd[k] + sd[hh], rtol=1e-6, err_msg=k)
      np.testing.assert_array_equal(back[hh], 0)

  cell = cells.get(kind, hidden_size=H, num_layers=2)
  params = random_params(cell.init(jax.random.key(0), F), jax.random.key(1))
  cell_back, params_back = from_torch(kind, to_torch(cell, params))
  assert cell_back.name == cell.name
  assert_trees_close(params_back, params, rtol=0, atol=0)


def test_bias_false_module_gets_zero_biases():
  sd = torch_state_dict("gru", 1, bias=False)
  cell, params = from_torch("gru", sd)
  xs = np.random.default_rng(1).normal(size=(B, T, F))
  _, hs = seqjax.scan(cell, params, jnp.asarray(xs, jnp.float32))
  np.testing.assert_allclose(hs, torch_forward("gru", sd, xs), rtol=1e-5, atol=1e-5)


def _without(sd, key):
  return {k: v for k, v in sd.items() if k != key}


@pytest.mark.parametrize("kind, state_dict, nonlinearity, message", [
    ("conv", torch_state_dict("rnn", 1), "tanh", r"unknown kind 'conv'; allowed: lstm, gru, rnn"),
    ("lstm", {**torch_state_dict("lstm", 1), "weight_ih_l0_reverse": np.zeros((16, F))}, "tanh",
     r"missing key 'weight_hh_l0_reverse'"),
    ("lstm", {**torch_state_dict("lstm", 1), "weight_hr_l0": np.zeros((2, H))}, "tanh",
     r"proj_size state_dict \('weight_hr_l0'\)"),
    ("lstm", _without(torch_state_dict("lstm", 2), "weight_hh_l1"), "tanh",
     r"missing key 'weight_hh_l1' \(a 2-layer state_dict\)"),
    ("lstm", _without(torch_state_dict("lstm", 1), "bias_hh_l0"), "tanh", r"missing key 'bias_hh_l0'"),
    ("lstm", torch_state_dict("gru", 1), "tanh", r"'weight_hh_l0' has shape \(12, 4\); a lstm needs \[4·H, H\]"),
    ("gru", {**torch_state_dict("gru", 1), "bias_ih_l0": np.zeros(5)}, "tanh",
     r"'bias_ih_l0' has shape \(5,\); expected \[12\]"),
    ("rnn", {**torch_state_dict("rnn", 2), "weight_ih_l1": np.zeros((H, 7))}, "tanh",
     r"'weight_ih_l1' has shape \(4, 7\); expected \[4, 4 \(layer 0's output size\)\]"),
    ("rnn", {**torch_state_dict("rnn", 1), "running_mean": np.zeros(H)}, "tanh",
     r"unknown key 'running_mean'"),
    ("rnn", torch_state_dict("rnn", 1), "relu", r"nonlinearity='relu': seqjax's rnn is tanh only"),
])
def test_bad_state_dicts_are_refused_with_one_line(kind, state_dict, nonlinearity, message):
  with pytest.raises(ValueError, match=message) as info:
    from_torch(kind, state_dict, nonlinearity=nonlinearity)
  assert "\n" not in str(info.value)


def test_to_torch_refuses_what_torch_cannot_hold():
  with pytest.raises(ValueError, match="one kind for every layer"):
    cell = cells.stack([cells.lstm(H), cells.gru(H)])
    to_torch(cell, cell.init(jax.random.key(0), F))
  with pytest.raises(ValueError, match="one hidden size"):
    cell = cells.stack([cells.lstm(5), cells.lstm(H)])
    to_torch(cell, cell.init(jax.random.key(0), F))
  with pytest.raises(ValueError, match="'rwa'"):
    to_torch(cells.rwa(H), cells.rwa(H).init(jax.random.key(0), F))

"""PyTorch weights in and out: `torch.nn.LSTM` / `GRU` / `RNN` state_dicts as seqjax params.

  cell, params = from_torch("lstm", torch_lstm.state_dict())   # seqjax.scan(cell, params, xs)
  state_dict = to_torch(cell, params)                           # torch_lstm.load_state_dict(...)
  bi, params = from_torch("gru", torch_bigru.state_dict())      # bi.apply(params, xs, lengths)

torch keeps, per layer k, `weight_ih_l{k}` [G·H, F], `weight_hh_l{k}` [G·H, H] and the biases
`bias_ih_l{k}`, `bias_hh_l{k}` [G·H], with the gates stacked in the order seqjax uses (LSTM
i, f, g, o; GRU r, z, n), so the conversion is a transpose: W_x = weight_ihᵀ, W_h = weight_hhᵀ.
The LSTM and the RNN add the two biases (b = bias_ih + bias_hh); the GRU keeps both (b_x, b_h),
since its n gate multiplies bias_hh's part by r. A bidirectional module keeps its reverse
direction's weights under the same names with `_reverse` appended; it becomes a
`seqjax.Bidirectional`. torch is never imported: tensors are read with their own
`.detach().cpu().float().numpy()`.
"""

import re

import numpy as np

from seqjax.bidirectional_layer import Bidirectional, bidirectional
from seqjax.cells import gru, lstm, rnn, stack
from seqjax.cells.base import Cell

_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
_MAKERS = {"lstm": lstm, "gru": gru, "rnn": rnn}
_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?")


def _as_array(name, value):
  if hasattr(value, "detach"):  # a torch tensor (also bfloat16, which .numpy() alone refuses)
    value = value.detach().cpu().float().numpy()
  try:
    array = np.asarray(value, np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"state_dict[{name!r}] is not an array of numbers "
                     f"({type(value).__name__})") from None
  return array


def from_torch(kind: str, state_dict, *, nonlinearity: str = "tanh"):
  """(cell, params) computing what the torch module of that state_dict computes.

  Args:
    kind: "lstm", "gru" or "rnn" (torch.nn.LSTM, GRU, RNN).
    state_dict: the module's `state_dict()` (torch tensors or NumPy arrays), any num_layers;
      sizes are read from the shapes. A module built with `bias=False` (no bias keys) gets
      zero biases.
    nonlinearity: torch.nn.RNN's (its state_dict does not record it); only "tanh" has a seqjax
      cell.

  Returns:
    (cells.<kind>(H), its params dict) for one layer, (cells.stack of the layers, tuple of dicts)
    for more; float32. `seqjax.scan` of them gives the torch module's outputs for batch_first
    inputs (`batch_first=False` modules: swap the first two axes of xs and hs).
    A bidirectional state_dict (`*_reverse` keys) gives (seqjax.bidirectional(cells.<kind>(H),
    num_layers=L), params), whose `apply(params, xs, lengths)` gives the module's batch_first
    outputs (with lengths: those of torch's packed sequences, padded steps 0).

  `proj_size` (`weight_hr_l*`) state_dicts, unknown, missing or misshapen keys raise a
  ValueError naming them.
  """
  if kind not in _GATES:
    raise ValueError(f"from_torch: unknown kind {kind!r}; allowed: {', '.join(_GATES)}")
  if nonlinearity != "tanh":
    raise ValueError(f"from_torch: nonlinearity={nonlinearity!r}: seqjax's rnn is tanh only"
                     if kind == "rnn" else
                     f"from_torch: nonlinearity applies to kind 'rnn' only, got {nonlinearity!r}")
  names = [str(k) for k in state_dict.keys()]
  if projected := [k for k in names if k.startswith("weight_hr_l")]:
    raise ValueError(f"from_torch: a proj_size state_dict ({projected[0]!r}): LSTMs with "
                     "projections have no seqjax cell")
  if unknown := [k for k in names if not _KEY.fullmatch(k)]:
    raise ValueError(f"from_torch: unknown key {unknown[0]!r}; a torch.nn.{kind.upper()} "
                     "state_dict has only weight_ih_l<k>, weight_hh_l<k>, bias_ih_l<k>, "
                     "bias_hh_l<k> (and the same with _reverse)")
  if not names:
    raise ValueError("from_torch: the state_dict is empty")
  values = {k: _as_array(k, v) for k, v in zip(names, state_dict.values())}
  num_layers = 1 + max(int(_KEY.fullmatch(k).group(2)) for k in names)
  has_bias = any(k.startswith("bias") for k in names)
  directions = ("", "_reverse") if any(k.endswith("_reverse") for k in names) else ("",)

  layers, params, input_size = [], [], None
  for layer in range(num_layers):
    pair = [_layer(kind, values, f"_l{layer}{suffix}", num_layers, has_bias, input_size, layer)
            for suffix in directions]
    layers.append(pair[0][0])
    params.append(tuple(p for _, p in pair))
    input_size = sum(c.hidden_size for c, _ in pair)
  if len(directions) == 2:
    return bidirectional(layers[0], num_layers=num_layers), tuple(params)
  params = [p for (p,) in params]
  if num_layers == 1:
    return layers[0], params[0]
  return stack(layers), tuple(params)


def _layer(kind, values, suffix, num_layers, has_bias, input_size, layer):
  """(cell, params) of one layer and direction (keys ending in `suffix`, e.g. "_l1_reverse")."""
  G = _GATES[kind]

  def get(name):
    key = f"{name}{suffix}"
    if key not in values:
      raise ValueError(f"from_torch: missing key {key!r} (a {num_layers}-layer state_dict)")
    return key, values[key]

  key, w_hh = get("weight_hh")
  if w_hh.ndim != 2 or w_hh.shape[0] != G * w_hh.shape[1]:
    rows = f"{G}·H" if G > 1 else "H"
    raise ValueError(f"from_torch: {key!r} has shape {w_hh.shape}; a {kind} needs [{rows}, H]")
  H = w_hh.shape[1]
  key, w_ih = get("weight_ih")
  F = w_ih.shape[1] if w_ih.ndim == 2 else None
  if w_ih.shape != (G * H, F) or (input_size is not None and F != input_size):
    want = "F" if input_size is None else f"{input_size} (layer {layer - 1}'s output size)"
    raise ValueError(f"from_torch: {key!r} has shape {w_ih.shape}; expected [{G * H}, {want}]")
  biases = []
  for name in ("bias_ih", "bias_hh"):
    if has_bias:
      key, b = get(name)
      if b.shape != (G * H,):
        raise ValueError(f"from_torch: {key!r} has shape {b.shape}; expected [{G * H}]")
    else:
      b = np.zeros(G * H)
    biases.append(b)
  p = {"W_x": w_ih.T, "W_h": w_hh.T}
  if kind == "gru":
    p.update(b_x=biases[0], b_h=biases[1])
  else:
    p["b"] = biases[0] + biases[1]
  return _MAKERS[kind](H), {k: np.asarray(v, np.float32) for k, v in p.items()}


def to_torch(cell, params) -> dict:
  """The torch.nn.LSTM / GRU / RNN state_dict of a seqjax rnn, lstm or gru (or a stack of one
  kind, or a `seqjax.Bidirectional` of them, whose reverse cell's weights get the `_reverse`
  keys): {"weight_ih_l0": [G·H, F], ...} as float32 NumPy arrays (`torch.from_numpy` each, or
  `load_state_dict({k: torch.tensor(v) ...})`).

  seqjax's LSTM and RNN keep one bias b where torch keeps two: it is written as bias_ih = b,
  bias_hh = 0 (the sum is what both compute with). The GRU's b_x, b_h are bias_ih, bias_hh.
  """
  if isinstance(cell, Bidirectional):
    layers = (cell.cell_fwd, cell.cell_bwd) * cell.num_layers
    directions = [("", p_fwd) for p_fwd, _ in params], [("_reverse", p) for _, p in params]
    name = f"bidirectional {cell.cell_fwd.name}/{cell.cell_bwd.name}"
  elif isinstance(cell, Cell):
    layers = cell.layers or (cell,)
    directions = ([("", p) for p in (params if cell.layers else (params,))],)
    name = cell.name
  else:
    raise TypeError(f"to_torch needs a seqjax Cell or Bidirectional, got {type(cell).__name__}")
  kinds = {c.name for c in layers}
  if len(kinds) != 1 or not kinds <= set(_GATES):
    raise ValueError(f"to_torch: cell {name!r}: torch modules are rnn, lstm or gru, "
                     "one kind for every layer")
  if len({c.hidden_size for c in layers}) != 1:
    raise ValueError(f"to_torch: cell {name!r}: torch modules have one hidden size for "
                     f"every layer, got {[c.hidden_size for c in layers]}")
  (kind,) = kinds
  out = {}
  for k, per_direction in enumerate(zip(*directions)):
    for suffix, p in per_direction:
      p = {key: np.asarray(v, np.float32) for key, v in p.items()}
      out[f"weight_ih_l{k}{suffix}"] = np.ascontiguousarray(p["W_x"].T)
      out[f"weight_hh_l{k}{suffix}"] = np.ascontiguousarray(p["W_h"].T)
      if kind == "gru":
        out[f"bias_ih_l{k}{suffix}"], out[f"bias_hh_l{k}{suffix}"] = p["b_x"], p["b_h"]
      else:
        out[f"bias_ih_l{k}{suffix}"], out[f"bias_hh_l{k}{suffix}"] = p["b"], np.zeros_like(p["b"])
  return out

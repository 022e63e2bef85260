"""Float64 NumPy references of each cell's equations, written from the paper and the cell tables
and sharing no code with seqjax. Each runs one unbatched sequence xs [T, F] -> hs [T, H]."""

import numpy as np


def sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def as64(params):
  return {k: np.asarray(v, np.float64) for k, v in params.items()}


def rnn(params, xs, h0=None):
  p = as64(params)
  h = np.zeros(p["b"].shape) if h0 is None else h0
  hs = []
  for x in np.asarray(xs, np.float64):
    h = np.tanh(x @ p["W_x"] + h @ p["W_h"] + p["b"])
    hs.append(h)
  return np.stack(hs)


def lstm(params, xs):
  p = as64(params)
  H = p["W_h"].shape[0]
  h, c = np.zeros(H), np.zeros(H)
  hs = []
  for x in np.asarray(xs, np.float64):
    pre = x @ p["W_x"] + h @ p["W_h"] + p["b"]
    i, f, g, o = pre[:H], pre[H:2 * H], pre[2 * H:3 * H], pre[3 * H:]
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    hs.append(h)
  return np.stack(hs)


def gru(params, xs):
  p = as64(params)
  H = p["W_h"].shape[0]
  h = np.zeros(H)
  hs = []
  for x in np.asarray(xs, np.float64):
    W_x, W_h, b_x, b_h = p["W_x"], p["W_h"], p["b_x"], p["b_h"]
    blk = lambda k: slice(k * H, (k + 1) * H)
    r = sigmoid(x @ W_x[:, blk(0)] + b_x[blk(0)] + h @ W_h[:, blk(0)] + b_h[blk(0)])
    z = sigmoid(x @ W_x[:, blk(1)] + b_x[blk(1)] + h @ W_h[:, blk(1)] + b_h[blk(1)])
    n = np.tanh(x @ W_x[:, blk(2)] + b_x[blk(2)] + r * (h @ W_h[:, blk(2)] + b_h[blk(2)]))
    h = (1 - z) * n + z * h
    hs.append(h)
  return np.stack(hs)


def rwa(params, xs):
  """The direct definition: h_t = tanh(Σ_{i≤t} z_i e^{a_i} / Σ_{i≤t} e^{a_i}), recomputing the
  whole weighted average at every step (softmax weights over the history, which is the same
  ratio with numerator and denominator divided by e^{max a}; no recursion, no running max)."""
  p = as64(params)
  h = np.tanh(p["s0"])
  zs, as_, hs = [], [], []
  for x in np.asarray(xs, np.float64):
    u = x @ p["W_u"] + p["b_u"]
    g = x @ p["W_gx"] + h @ p["W_gh"] + p["b_g"]
    a = x @ p["W_ax"] + h @ p["W_ah"]
    zs.append(u * np.tanh(g))
    as_.append(a)
    A, Z = np.stack(as_), np.stack(zs)            # [t, H]
    weights = np.exp(A - A.max(axis=0))           # the ratio is unchanged by a common factor
    h = np.tanh((Z * weights).sum(axis=0) / weights.sum(axis=0))
    hs.append(h)
  return np.stack(hs)


def min_rwa(params, xs):
  """Causal softmax attention with one score per unit, recomputed over the whole history at
  every step: h_t = tanh(Σ_{i≤t} softmax_i(a) z_i)."""
  p = as64(params)
  xs = np.asarray(xs, np.float64)
  Z = (xs @ p["W_u"] + p["b_u"]) * np.tanh(xs @ p["W_g"] + p["b_g"])  # [T, H]
  A = xs @ p["W_a"]
  hs = []
  for t in range(len(xs)):
    weights = np.exp(A[:t + 1] - A[:t + 1].max(axis=0))
    hs.append(np.tanh((Z[:t + 1] * weights).sum(axis=0) / weights.sum(axis=0)))
  return np.stack(hs)


def _discounted_mean(Z, A, log_F):
  """tanh(n_t / d_t) with the direct sums n_t = Σ_{i≤t} (Π_{i<j≤t} f_j) z_i e^{a_i} and
  d_t = Σ_{i≤t} (Π_{i<j≤t} f_j) e^{a_i} of the history Z, A, log_F [t, H] (the product taken as
  the exp of a sum of logs, every weight divided by the largest: the ratio is unchanged)."""
  later = np.cumsum(log_F[::-1], axis=0)[::-1] - log_F  # Σ_{i<j≤t} log f_j, row i
  log_w = A + later
  weights = np.exp(log_w - log_w.max(axis=0))
  return np.tanh((Z * weights).sum(axis=0) / weights.sum(axis=0))


def log_sigmoid(v):
  return -np.logaddexp(0.0, -v)


def rda(params, xs):
  """The rwa with the discount f_t = σ(x W_fx + h W_fh + b_f) on all the past weights, the
  whole discounted average recomputed from the history at every step."""
  p = as64(params)
  h = np.tanh(p["s0"])
  zs, as_, fs, hs = [], [], [], []
  for x in np.asarray(xs, np.float64):
    u = x @ p["W_u"] + p["b_u"]
    g = x @ p["W_gx"] + h @ p["W_gh"] + p["b_g"]
    zs.append(u * np.tanh(g))
    as_.append(x @ p["W_ax"] + h @ p["W_ah"])
    fs.append(log_sigmoid(x @ p["W_fx"] + h @ p["W_fh"] + p["b_f"]))
    h = _discounted_mean(np.stack(zs), np.stack(as_), np.stack(fs))
    hs.append(h)
  return np.stack(hs)


def min_rda(params, xs):
  p = as64(params)
  xs = np.asarray(xs, np.float64)
  Z = (xs @ p["W_u"] + p["b_u"]) * np.tanh(xs @ p["W_g"] + p["b_g"])  # [T, H]
  A, log_F = xs @ p["W_a"], log_sigmoid(xs @ p["W_f"] + p["b_f"])
  return np.stack([_discounted_mean(Z[:t + 1], A[:t + 1], log_F[:t + 1]) for t in range(len(xs))])


def min_gru(params, xs):
  p = as64(params)
  h = np.zeros(p["b_z"].shape)
  hs = []
  for x in np.asarray(xs, np.float64):
    z = sigmoid(x @ p["W_z"] + p["b_z"])
    h = (1 - z) * h + z * (x @ p["W_h"] + p["b_h"])
    hs.append(h)
  return np.stack(hs)


def min_lstm(params, xs):
  p = as64(params)
  h = np.zeros(p["b_f"].shape)
  hs = []
  for x in np.asarray(xs, np.float64):
    f, i = sigmoid(x @ p["W_f"] + p["b_f"]), sigmoid(x @ p["W_i"] + p["b_i"])
    h = (f * h + i * (x @ p["W_h"] + p["b_h"])) / (f + i)
    hs.append(h)
  return np.stack(hs)


REFERENCES = {"rnn": rnn, "lstm": lstm, "gru": gru, "rwa": rwa, "rda": rda,
              "min_rwa": min_rwa, "min_rda": min_rda, "min_gru": min_gru, "min_lstm": min_lstm}

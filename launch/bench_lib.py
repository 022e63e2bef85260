"""The measuring functions of launch.benchmark: one configuration's train and inference steps for
seqjax and its anchors, timed interleaved in one process; the remat memory table; the many-runs
table. Plain functions of explicit sizes (no flags), so the single-configuration mode and every
section of the suite time things the same way.

A row's `ratio` is its time / the first row's time of the same configuration (the reference:
seqjax's first variant), so > 1 means the reference is faster.
"""

import os
import statistics
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import seqjax
from seqjax import _fused, cells, models

from . import allocator

FLAX_CELLS = {"lstm": "OptimizedLSTMCell", "gru": "GRUCell", "rnn": "SimpleCell"}
TORCH_CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
ANCHORS = ("flax", "torch", "torch_fp16", "cudnn")


class Contender(NamedTuple):
  label: str
  train: Callable[[], None]  # one train step, blocked until done
  infer: Callable[[], None]  # one forward pass, blocked until done


def _loss(ys_BxTxH_or_O):
  return jnp.mean(ys_BxTxH_or_O ** 2)


def _adam_step(tx, loss_of_params):
  """The train step of a model whose loss is loss_of_params(params, xs): grad, Adam, update."""
  def train_step(state, xs):
    params, opt_state = state
    grads = jax.grad(loss_of_params)(params, xs)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return train_step


# seqjax.scan's options that --scan_variants times against the plain forward scan, on the same
# inputs: lengths uniform in [T/2, T], resets at 1% of the steps (fixed draws).
SCAN_VARIANTS = ("reverse", "resets", "lengths", "reverse+lengths")


def scan_variant_kwargs(variant, xs, seed=2):
  """seqjax.scan keyword arguments of a SCAN_VARIANTS entry for inputs xs [B, T, F]."""
  B, T = xs.shape[:2]
  kl, kr = jax.random.split(jax.random.key(seed))
  kw = {}
  for part in variant.split("+"):
    if part == "reverse":
      kw["reverse"] = True
    elif part == "resets":
      kw["resets"] = jax.random.bernoulli(kr, 0.01, (B, T))
    elif part == "lengths":
      kw["lengths"] = jax.random.randint(kl, (B,), T // 2, T + 1)
    else:
      raise ValueError(f"scan variant {variant!r}: parts from reverse, resets, lengths")
  return kw


def seqjax_fns(cell, xs, remat=False, unroll=1, scan_kwargs=None):
  params = models.init(cell, jax.random.key(0), xs.shape[-1], 1)
  tx = optax.adam(1e-3)
  scan_kwargs = scan_kwargs or {}

  def infer(params, xs):
    return models.readout(params, seqjax.scan(cell, params["cell"], xs, unroll=unroll,
                                              remat=remat, **scan_kwargs)[1])

  step = _adam_step(tx, lambda p, xs: _loss(infer(p, xs)))
  return (params, tx.init(params)), jax.jit(step, donate_argnums=0), jax.jit(infer)


def flax_fns(name, xs, hidden_size, unroll=1):
  from flax import linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, xs):
      hs = nn.RNN(getattr(nn, FLAX_CELLS[name])(hidden_size), unroll=unroll)(xs)
      return nn.Dense(1)(hs)

  net = Net()
  params = net.init(jax.random.key(0), xs)
  tx = optax.adam(1e-3)
  step = _adam_step(tx, lambda p, xs: _loss(net.apply(p, xs)))
  return (params, tx.init(params)), jax.jit(step, donate_argnums=0), jax.jit(net.apply)


def cudnn_fns(xs, hidden_size):
  """cuDNN's LSTM through jax.experimental.rnn (GPU only; its own flat weight layout)."""
  from jax.experimental import rnn
  B, F, H = xs.shape[0], xs.shape[-1], hidden_size
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"w": rnn.init_lstm_weight(k1, F, H, 1, False),
            "head": jax.random.normal(k2, (H, 1)) / np.sqrt(H)}
  zeros = jnp.zeros((1, B, H), jnp.float32)
  lengths = jnp.full((B,), xs.shape[1], jnp.int32)
  tx = optax.adam(1e-3)

  def apply(params, xs):
    hs = rnn.lstm(xs, zeros, zeros, params["w"], lengths, input_size=F, hidden_size=H,
                  num_layers=1, dropout=0.0, bidirectional=False)[0]
    return hs @ params["head"]

  step = _adam_step(tx, lambda p, xs: _loss(apply(p, xs)))
  return (params, tx.init(params)), jax.jit(step, donate_argnums=0), jax.jit(apply)


def _torch():
  """torch, its OpenMP threads waiting passively (unless OMP_WAIT_POLICY is set): spinning, they
  steal the cores from the row timed next, and on a loaded 2-core machine a torch LSTM step took
  8.5 s instead of 50 ms (B=64 T=100 H=64, median of 7). Read when torch first loads."""
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  import torch
  return torch


def torch_cuda():
  """True when JAX runs on a GPU and torch sees CUDA (torch is then timed there)."""
  torch = _torch()
  return jax.default_backend() == "gpu" and torch.cuda.is_available()


def persistent_shapes(B, F, H):
  """The shapes at which torch lets cuDNN pick its persistent LSTM kernel (with fp16/bf16):
  B % 8 == 0, B <= 128, H % 128 == 0, F % 128 == 0."""
  return B % 8 == 0 and B <= 128 and H % 128 == 0 and F % 128 == 0


def torch_fns(name, xs_np, hidden_size, half=False):
  """torch.nn.LSTM/GRU/RNN with a linear head and Adam; `half`: params and data in fp16 (CUDA
  only), the precision at which cuDNN may take its persistent kernel."""
  torch = _torch()
  torch.manual_seed(0)
  device = "cuda" if torch_cuda() else "cpu"
  rnn = getattr(torch.nn, TORCH_CELLS[name])(xs_np.shape[-1], hidden_size, batch_first=True)
  head = torch.nn.Linear(hidden_size, 1)
  rnn, head = rnn.to(device), head.to(device)
  xs = torch.from_numpy(np.array(xs_np)).to(device)  # a writable copy
  if half:
    rnn, head, xs = rnn.half(), head.half(), xs.half()
  # eps 1e-8 underflows to 0 in fp16; 1e-4 keeps the fp16 update finite.
  opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3,
                         eps=1e-4 if half else 1e-8)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def train_step():
    opt.zero_grad(set_to_none=True)
    loss = (head(rnn(xs)[0]).float() ** 2).mean()
    loss.backward()
    opt.step()
    sync()

  def infer():
    with torch.no_grad():
      head(rnn(xs)[0])
    sync()

  where = (f"CUDA, cuDNN {torch.backends.cudnn.version()}" if device == "cuda"
           else f"{torch.get_num_threads()} threads")
  return train_step, infer, f"torch {torch.__version__} ({where})"


def _blocked(step, box, key, xs):
  def train():
    box[key] = step(box[key], xs)
    jax.block_until_ready(box[key])
  return train


def _jax_contender(label, fns, box, xs, layout=None):
  box[label], step, infer = fns
  # jit traces at the first call: a forced layout is set around every call
  return Contender(label, _under_layout(layout, _blocked(step, box, label, xs)),
                   _under_layout(layout, lambda: jax.block_until_ready(infer(box[label][0], xs))))


# --layouts: the two backward layouts of the hand-written pass, forced whatever the rule picks
LAYOUTS = {"after": " (weight gradients after the loop)", "in_loop": " (weight gradients in the loop)"}


def _under_layout(layout, fn):
  if layout is None:
    return fn

  def call():
    with _fused.forced_layout(layout):
      fn()
  return call


def contenders(name, B, T, F, H, *, unrolls, num_layers=(1,), dtypes=("float32",), versus=(),
               autodiff_row=False, anchors=ANCHORS, seed=1, scan_variants=(), layouts=False):
  """The contenders of one configuration, seqjax's first variant first; returns (contenders,
  notes: why an asked-for row is absent or is another row, versions)."""
  xs = jax.random.normal(jax.random.key(seed), (B, T, F), jnp.float32)
  box, out, notes = {}, [], []
  versions = {"jax": jax.__version__, "device": str(jax.devices()[0]),
              "backend": jax.default_backend(), "malloc": allocator.describe(),
              # the default row's backward layout: the library's rule, told or not that the
              # allocator keeps freed memory, or a layout forced
              "backward_layout": _fused.forced() or (
                  "backward_layout's rule, freed memory kept" if _fused.memory_kept()
                  else "backward_layout's rule")}

  def get(cell_name, layers, dtype):
    return cells.get(cell_name, hidden_size=H, num_layers=layers,
                     dtype=None if dtype == "float32" else jnp.bfloat16)

  variants = []  # (label, cell, unroll, scan keyword arguments, forced layout or None)
  for dtype in dtypes:
    tag = "" if dtype == "float32" else f" {dtype}"
    for n in num_layers:
      cell = get(name, n, dtype)
      for u in unrolls:
        variants.append((f"seqjax {cell.name}" + (f" unroll={u}" if len(unrolls) > 1 else "")
                         + tag, cell, u, {}, None))
    for other in versus:
      vcell = get(other, num_layers[0], dtype)
      variants.append((f"seqjax {vcell.name}{tag}", vcell, unrolls[0], {}, None))
  label, cell, u, _, _ = variants[0]
  if autodiff_row:
    variants.append((label + " (jax.grad backward)", cells.autodiff_backward(cell), u, {}, None))
  for variant in scan_variants:
    variants.append((f"{label} {variant}", cell, u, scan_variant_kwargs(variant, xs), None))
  if layouts:
    variants += [(label + suffix, cell, u, {}, layout) for layout, suffix in LAYOUTS.items()]
  for label, cell, unroll, kw, layout in variants:
    out.append(_jax_contender(label, seqjax_fns(cell, xs, unroll=unroll, scan_kwargs=kw), box,
                              xs, layout))
  gpu = jax.default_backend() == "gpu"
  if "flax" in anchors:
    if name in FLAX_CELLS:
      import flax
      versions["flax"] = flax.__version__
      # flax's default (unroll 1) and flax at seqjax's unroll, so unrolling is not counted as
      # seqjax's alone.
      for u in sorted({1, unrolls[0]}):
        out.append(_jax_contender(f"flax nn.RNN({FLAX_CELLS[name]})"
                                  + ("" if u == 1 else f" unroll={u}"),
                                  flax_fns(name, xs, H, unroll=u), box, xs))
      if unrolls[0] == 1:
        notes.append("flax at seqjax's unroll: that is unroll 1, flax's default row")
    else:
      notes.append(f"flax: no {name} cell in flax")
  if "cudnn" in anchors:
    if name != "lstm":
      notes.append(f"cudnn: jax.experimental.rnn has an LSTM only, no {name}")
    elif not gpu:
      notes.append(f"cudnn: GPU only (backend {jax.default_backend()})")
    else:
      out.append(_jax_contender("cuDNN (jax.experimental.rnn)", cudnn_fns(xs, H), box, xs))
  for half in (False, True):
    anchor = "torch_fp16" if half else "torch"
    if anchor not in anchors:
      continue
    if name not in TORCH_CELLS:
      notes.append(f"{anchor}: no {name} module in torch")
      continue
    try:
      cuda = torch_cuda()
    except ImportError:
      notes.append(f"{anchor}: torch not importable")
      continue
    if half and not cuda:
      notes.append(f"{anchor}: CUDA only (JAX on {jax.default_backend()}"
                   + (", torch without CUDA)" if gpu else ")"))
      continue
    ttrain, tinfer, versions["torch"] = torch_fns(name, np.asarray(xs), H, half=half)
    label = f"torch.nn.{TORCH_CELLS[name]}"
    if half:
      label += (" fp16, persistent-kernel shapes" if persistent_shapes(B, F, H)
                else " fp16 (not persistent-kernel shapes)")
    out.append(Contender(label, ttrain, tinfer))
  return out, notes, versions


def _time(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def _time_both(fn):
  """(wall seconds, CPU seconds of this process's threads) of one call."""
  t, c = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - t, time.process_time() - c


def time_rows(contenders, repeats, tokens):
  """Medians of `repeats` interleaved runs (after two warm-up runs each) of every contender's
  train and inference steps, one row per (contender, kind); ratio = time / first contender's.
  Each timed call follows an untimed call of the same step, as in a training loop: timed right
  after another library's call, a step pays for that library's cache and thread state (a seqjax
  rnn step, B = 64, T = 100, H = 64: 6.0 ms after itself, 7.0 ms after torch's).
  cpu_ms, cpu_ratio: the same for the process's CPU time, which on a machine shared with other
  jobs tracks the work done where the wall time also counts the waiting for a core."""
  times = {(c.label, kind): [] for c in contenders for kind in ("train", "infer")}
  for c in contenders:  # warm-up: compile and first runs
    c.train(); c.train(); c.infer(); c.infer()
  for _ in range(repeats):
    for c in contenders:
      for kind, fn in (("train", c.train), ("infer", c.infer)):
        fn()
        times[(c.label, kind)].append(_time_both(fn))
  med = {key: statistics.median(t for t, _ in ts) for key, ts in times.items()}
  cpu = {key: statistics.median(c for _, c in ts) for key, ts in times.items()}
  first = contenders[0].label
  return [{"implementation": label, "kind": kind, "ms": 1000 * m, "tokens_per_s": tokens / m,
           "ratio": m / med[(first, kind)], "cpu_ms": 1000 * cpu[(label, kind)],
           "cpu_ratio": cpu[(label, kind)] / max(cpu[(first, kind)], 1e-9)}
          for (label, kind), m in med.items()]


def memory_table(cell, B, F, lengths):
  """XLA's compiled temp bytes (memory analysis; compiled, not run) of the whole seqjax train
  step through models.apply -- forward, squared loss against targets, backward, Adam -- by T,
  with the outputs read at the last step (adding-like: keys plain, remat) and at every step
  (plain_per_step, remat_per_step), without and with remat."""
  tx = optax.adam(1e-3)
  params = models.init(cell, jax.random.key(0), F, 1)
  state = (params, tx.init(params))
  rows = []
  for T in lengths:
    xs = jax.ShapeDtypeStruct((B, T, F), jnp.float32)
    row = {"T": T}
    for per_step in (False, True):
      ys = jax.ShapeDtypeStruct((B, T, 1) if per_step else (B, 1), jnp.float32)
      for remat in (False, True):
        def loss(p, xs, ys=ys, per_step=per_step, remat=remat):
          return jnp.mean((models.apply(cell, p, xs, per_step=per_step, remat=remat) - ys) ** 2)

        def train_step(state, xs, ys, loss=loss):
          return _adam_step(tx, lambda p, xs: loss(p, xs, ys))(state, xs)

        key = ("remat" if remat else "plain") + ("_per_step" if per_step else "")
        try:
          compiled = jax.jit(train_step, donate_argnums=0).lower(state, xs, ys).compile()
          row[key] = compiled.memory_analysis().temp_size_in_bytes
        except jax.errors.JaxRuntimeError as e:  # e.g. GPU autotuning cannot fit the buffers
          row[key] = None
          row["error"] = str(e).splitlines()[0][:200]
    rows.append(row)
  return rows


def runs_table(cell, B, T, F, counts, repeats):
  """ms per train step of N runs (own params, Adam state and batch each), vmapped and looped,
  and the ratios time(N) / (N * time(1 run)); the one-run step is timed interleaved with them."""
  from seqjax import train
  tx = optax.adam(1e-3)
  one = _adam_step(tx, lambda p, xs: _loss(models.readout(p, seqjax.scan(cell, p["cell"], xs)[1])))

  box, steps = {}, {}
  for n in sorted(set([1] + list(counts))):
    keys = jax.random.split(jax.random.key(0), n)
    params = [models.init(cell, k, F, 1) for k in keys]
    state = jax.tree.map(lambda *xs: jnp.stack(xs), *[(p, tx.init(p)) for p in params])
    xs = jax.random.normal(jax.random.key(1), (n, B, T, F), jnp.float32)
    if n == 1:  # the plain one-run program, no runs axis
      state, xs = jax.tree.map(lambda x: x[0], state), xs[0]
    for looped in ((False,) if n == 1 else (False, True)):
      box[n, looped] = jax.tree.map(jnp.copy, state)
      steps[n, looped] = (jax.jit(one if n == 1 else train.over_runs(one, n, one_at_a_time=looped),
                                  donate_argnums=0), xs)

  timed = {key: _blocked(step, box, key, xs) for key, (step, xs) in steps.items()}
  for fn in timed.values():
    fn(); fn()
  times = {key: [] for key in steps}
  for _ in range(repeats):
    for key, fn in timed.items():
      times[key].append(_time(fn))
  med = {key: statistics.median(ts) for key, ts in times.items()}
  return [{"runs": n, "ms_vmap": 1000 * med[n, False], "ms_loop": 1000 * med[n, n > 1],
           "ratio_vmap": med[n, False] / (n * med[1, False]),
           "ratio_loop": med[n, n > 1] / (n * med[1, False])} for n in counts]


def runs_looped():
  """The runner's way of training many runs on this backend: True = loop, False = vmap."""
  from seqjax import train
  return train.runs_one_at_a_time(runs_spread_over_devices=False)


# ---- the research-size grid ----

GRID_CELLS = ("lstm", "gru", "rnn", "rwa", "rda")
GRID_POINTS = ((64, 100, 3, 64), (100, 100, 2, 64), (100, 100, 2, 250), (16, 200, 32, 256),
               (32, 300, 8, 128), (100, 1000, 2, 128), (1, 10000, 2, 128))  # (B, T, F, H)
TINY_GRID_POINTS = ((4, 6, 2, 8),)
# Points with at least this many tokens (B * T) get at most LARGE_REPEATS timed repeats.
LARGE_TOKENS, LARGE_REPEATS = 50_000, 3
_PEAK_SEEN = {}  # sgemm size -> the best GFLOP/s measured so far in this process


def matmul_flops(name, B, T, F, H, kind):
  """The matrix-product FLOPs of one train step ("train": forward, the products backward to the
  inputs and state, the weight gradients: 3x the forward) or one forward pass ("infer") of
  `name` with the benchmark's linear readout (H -> 1): 2 * B * T * (every matrix's rows * cols +
  H). Elementwise work is not counted, so a share of peak is an upper bound on the matmul
  efficiency."""
  params = jax.eval_shape(lambda: cells.get(name, H).init(jax.random.key(0), F))
  size = sum(a.shape[0] * a.shape[1] for a in jax.tree.leaves(params) if a.ndim == 2)
  return (3 if kind == "train" else 1) * 2 * B * T * (size + H)


def sgemm_gflops(n=2048, repeats=5):
  """This machine's float32 matmul rate (GFLOP/s, best of `repeats`) for an n x n product
  through XLA and, when importable, torch; the peak is the larger."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  dot = jax.jit(lambda a: a @ a)
  jax.block_until_ready(dot(a))
  rates = {"xla": 2 * n ** 3 / min(_time(lambda: jax.block_until_ready(dot(a)))
                                   for _ in range(repeats)) / 1e9}
  try:
    torch = _torch()
  except ImportError:
    return rates
  t = torch.from_numpy(np.array(a))  # a writable copy
  torch.mm(t, t)
  rates["torch"] = 2 * n ** 3 / min(_time(lambda: torch.mm(t, t)) for _ in range(repeats)) / 1e9
  return rates


def grid_point(name, B, T, F, H, repeats, anchors=("flax", "torch"), sgemm_n=2048,
               layouts=False):
  """One cell at one grid point: seqjax's default, seqjax under `cells.autodiff_backward`, the
  anchors, train and inference, interleaved medians; the sgemm rate measured just before (the
  peak: the best rate measured so far in this process), and
  each row's matmul GFLOP/s and share of that peak (sgemm_n x sgemm_n products); layouts: also
  the default with each backward layout forced (`LAYOUTS`). Returns (rows, notes, versions)."""
  rates = sgemm_gflops(sgemm_n)
  # the best rate this process has seen: a single measurement on a loaded machine can catch the
  # cores busy and make a share of "peak" exceed 100%
  _PEAK_SEEN[sgemm_n] = peak = max(_PEAK_SEEN.get(sgemm_n, 0.0), *rates.values())
  got, notes, versions = contenders(name, B, T, F, H, unrolls=(seqjax.default_unroll(),),
                                    autodiff_row=True, anchors=anchors, layouts=layouts)
  if B * T >= LARGE_TOKENS:
    repeats = min(repeats, LARGE_REPEATS)
  rows = []
  for r in time_rows(got, repeats, B * T):
    gflops = matmul_flops(name, B, T, F, H, r["kind"]) / (r["ms"] / 1000) / 1e9
    rows.append({"cell": name, "B": B, "T": T, "F": F, "H": H, **r, "repeats": repeats,
                 "gflops": gflops, "peak_gflops": peak, "share_of_peak": gflops / peak,
                 **{f"sgemm_{k}_gflops": v for k, v in rates.items()}})
  return rows, notes, versions

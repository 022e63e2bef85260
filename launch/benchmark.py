"""Speed and memory of seqjax's cells against the anchors users would otherwise pick.

  python -m launch.benchmark --cell=lstm --batch_size=100 --seq_len=1000 --input_size=2 --hidden_size=128
  python -m launch.benchmark --cell=min_rwa --versus=rwa --anchors= --seq_len=10000 --batch_size=10

Times, in one process, interleaved, the median of --repeats runs after warm-up (block_until_ready):
the train step (forward over T, a linear readout and squared loss at every step, backward, Adam
update; donated state) and inference (forward only), for seqjax and for the anchors on the same
shapes: flax nn.RNN(OptimizedLSTMCell | GRUCell | SimpleCell), when importable torch.nn.LSTM /
GRU / RNN (on CUDA when JAX runs on a GPU and torch sees one), and on a GPU cuDNN's LSTM through
jax.experimental.rnn (--anchors=cudnn). Ratios are anchor time / seqjax time (> 1: seqjax is faster). --memory adds XLA's
compiled temp-memory figure of the seqjax train step (models.apply, squared loss, backward, Adam;
outputs read at the last step and at every step) for several T, with and without remat.
--runs=1,2,8 adds a table: one train step of N runs trained as one program (the one-run step
mapped over a leading runs axis of params, Adam state and data, as launch.main --seeds does:
jax.vmap, and jax.lax.map one run at a time, the runner's choice on CPU) against N times one
run, interleaved in the same process.
"""

import json
import statistics
import sys
import time

from absl import app, flags

import jax
import jax.numpy as jnp
import numpy as np
import optax

import seqjax
from seqjax import cells, models

CELL = flags.DEFINE_enum("cell", "lstm", list(cells.NAMES), "Cell to time.")
BATCH = flags.DEFINE_integer("batch_size", 100, "B")
SEQ_LEN = flags.DEFINE_integer("seq_len", 1000, "T")
INPUT = flags.DEFINE_integer("input_size", 2, "F")
HIDDEN = flags.DEFINE_integer("hidden_size", 128, "H")
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                          "seqjax's matmul operand precision (params and state stay float32; "
                          "the anchors run float32).")
NUM_LAYERS = flags.DEFINE_list("num_layers", ["1"],
                               "Layer counts of the seqjax cell to time, e.g. 1,2 (anchors: 1). "
                               "Ratios are against the first.")
AUTODIFF_ROW = flags.DEFINE_boolean(
    "autodiff_row", False, "Also time seqjax's first cell with its hand-written backward pass "
    "switched off (jax.grad of the scan), to show what that pass buys.")
VERSUS = flags.DEFINE_list(
    "versus", [], "Other seqjax cells timed in the same process on the same shapes, e.g. "
    "--cell=min_rwa --versus=rwa (their ratio column: their time / --cell's).")
flags.register_validator("versus", lambda names: all(n in cells.NAMES for n in names),
                         f"--versus: a list of cell names from {', '.join(cells.NAMES)}")
REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per row (median reported).")
UNROLL = flags.DEFINE_list("unroll", [], "seqjax scan unroll values to time, e.g. 1,4,8 "
                           "(default: seqjax.scan's measured best for the backend).")
ANCHORS = flags.DEFINE_list("anchors", ["flax", "torch", "cudnn"],
                            "Anchors to time: flax, torch, cudnn (GPU, lstm only); empty: none.")
MEMORY = flags.DEFINE_list("memory", [], "Sequence lengths for the memory table, e.g. 1000,10000,100000.")
JSON = flags.DEFINE_string("json", None, "Also write the results as JSON to this file.")
RUNS = flags.DEFINE_list("runs", [], "Run counts N for the many-runs table, e.g. 1,2,8.")

FLAX_CELLS = {"lstm": "OptimizedLSTMCell", "gru": "GRUCell", "rnn": "SimpleCell"}
TORCH_CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def _loss(ys_BxTxH_or_O):
  return jnp.mean(ys_BxTxH_or_O ** 2)


def seqjax_fns(cell, xs, remat=False, unroll=1):
  params = models.init(cell, jax.random.key(0), xs.shape[-1], 1)
  tx = optax.adam(1e-3)

  def loss_fn(params, xs):
    _, hs = seqjax.scan(cell, params["cell"], xs, unroll=unroll, remat=remat)
    return _loss(models.readout(params, hs))

  def train_step(state, xs):
    params, opt_state = state
    grads = jax.grad(loss_fn)(params, xs)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def infer(params, xs):
    return models.readout(params, seqjax.scan(cell, params["cell"], xs, unroll=unroll)[1])

  return (params, tx.init(params)), jax.jit(train_step, donate_argnums=0), jax.jit(infer)


def flax_fns(name, xs):
  from flax import linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, xs):
      hs = nn.RNN(getattr(nn, FLAX_CELLS[name])(HIDDEN.value))(xs)
      return nn.Dense(1)(hs)

  net = Net()
  params = net.init(jax.random.key(0), xs)
  tx = optax.adam(1e-3)

  def train_step(state, xs):
    params, opt_state = state
    grads = jax.grad(lambda p: _loss(net.apply(p, xs)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return (params, tx.init(params)), jax.jit(train_step, donate_argnums=0), jax.jit(net.apply)


def cudnn_fns(xs):
  """cuDNN's LSTM through jax.experimental.rnn (GPU only; its own flat weight layout)."""
  from jax.experimental import rnn
  B, F, H = xs.shape[0], xs.shape[-1], HIDDEN.value
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

  def train_step(state, xs):
    params, opt_state = state
    grads = jax.grad(lambda p: _loss(apply(p, xs)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return (params, tx.init(params)), jax.jit(train_step, donate_argnums=0), jax.jit(apply)


def torch_fns(name, xs_np):
  import torch
  torch.manual_seed(0)
  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  rnn = getattr(torch.nn, TORCH_CELLS[name])(INPUT.value, HIDDEN.value, batch_first=True)
  head = torch.nn.Linear(HIDDEN.value, 1)
  rnn, head = rnn.to(device), head.to(device)
  opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)
  xs = torch.from_numpy(np.array(xs_np)).to(device)  # a writable copy
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def train_step():
    opt.zero_grad(set_to_none=True)
    loss = (head(rnn(xs)[0]) ** 2).mean()
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


def _time(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def memory_table(cell, lengths):
  """XLA's compiled temp bytes (memory analysis; compiled, not run) of the whole seqjax train
  step through models.apply -- forward, squared loss against targets, backward, Adam -- by T,
  with the outputs read at the last step (adding-like: keys plain, remat) and at every step
  (plain_per_step, remat_per_step), without and with remat."""
  tx = optax.adam(1e-3)
  params = models.init(cell, jax.random.key(0), INPUT.value, 1)
  state = (params, tx.init(params))
  rows = []
  for T in lengths:
    xs = jax.ShapeDtypeStruct((BATCH.value, T, INPUT.value), jnp.float32)
    row = {"T": T}
    for per_step in (False, True):
      ys = jax.ShapeDtypeStruct((BATCH.value, T, 1) if per_step else (BATCH.value, 1),
                                jnp.float32)
      for remat in (False, True):
        def train_step(state, xs, ys, per_step=per_step, remat=remat):
          params, opt_state = state
          grads = jax.grad(lambda p: jnp.mean(
              (models.apply(cell, p, xs, per_step=per_step, remat=remat) - ys) ** 2))(params)
          updates, opt_state = tx.update(grads, opt_state, params)
          return optax.apply_updates(params, updates), opt_state

        key = ("remat" if remat else "plain") + ("_per_step" if per_step else "")
        try:
          compiled = jax.jit(train_step, donate_argnums=0).lower(state, xs, ys).compile()
          row[key] = compiled.memory_analysis().temp_size_in_bytes
        except jax.errors.JaxRuntimeError as e:  # e.g. GPU autotuning cannot fit the buffers
          row[key] = None
          row["error"] = str(e).splitlines()[0][:200]
    rows.append(row)
  return rows


def runs_table(cell, counts):
  """ms per train step of N runs (own params, Adam state and batch each), vmapped and looped,
  and the ratios time(N) / (N * time(1 run)); the one-run step is timed interleaved with them."""
  from seqjax import train
  B, T, F = BATCH.value, SEQ_LEN.value, INPUT.value
  tx = optax.adam(1e-3)

  def one(state, xs):
    params, opt_state = state
    grads = jax.grad(lambda p: _loss(models.readout(p, seqjax.scan(cell, p["cell"], xs)[1])))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  box, steps = {}, {}
  for n in sorted(set([1] + counts)):
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

  def timed(key):
    step, xs = steps[key]
    box[key] = step(box[key], xs)
    jax.block_until_ready(box[key])

  for key in steps:
    timed(key); timed(key)
  times = {key: [] for key in steps}
  for _ in range(REPEATS.value):
    for key in steps:
      times[key].append(_time(lambda: timed(key)))
  med = {key: statistics.median(ts) for key, ts in times.items()}
  return [{"runs": n, "ms_vmap": 1000 * med[n, False], "ms_loop": 1000 * med[n, n > 1],
           "ratio_vmap": med[n, False] / (n * med[1, False]),
           "ratio_loop": med[n, n > 1] / (n * med[1, False])} for n in counts]


def train_runs_looped():
  from seqjax import train
  return train.runs_one_at_a_time(runs_spread_over_devices=False)


def main(argv):
  del argv
  if RUNS.value:
    from launch.flags import parse_list
    from seqjax.settings import RunError
    try:
      counts = list(parse_list("runs", RUNS.value, int, minimum=1))
    except RunError as e:
      sys.exit(f"error: {e}")
  name = CELL.value
  B, T, F = BATCH.value, SEQ_LEN.value, INPUT.value
  xs = jax.random.normal(jax.random.key(1), (B, T, F), jnp.float32)
  contenders = {}  # label -> (train thunk, infer thunk)
  box = {}
  unrolls = [int(u) for u in UNROLL.value] or [seqjax.default_unroll()]
  variants = []  # (label, cell, unroll)
  for n in NUM_LAYERS.value:
    cell = cells.get(name, hidden_size=HIDDEN.value, num_layers=int(n),
                     dtype=None if DTYPE.value == "float32" else jnp.bfloat16)
    for u in unrolls:
      variants.append((f"seqjax {cell.name}" + (f" unroll={u}" if len(unrolls) > 1 else "")
                       + (f" {DTYPE.value}" if DTYPE.value != "float32" else ""), cell, u))
  for other in VERSUS.value:
    vcell = cells.get(other, hidden_size=HIDDEN.value, num_layers=int(NUM_LAYERS.value[0]),
                      dtype=None if DTYPE.value == "float32" else jnp.bfloat16)
    variants.append((f"seqjax {vcell.name}" + (f" {DTYPE.value}" if DTYPE.value != "float32"
                                               else ""), vcell, unrolls[0]))
  if AUTODIFF_ROW.value:
    label, cell, u = variants[0]
    variants.append((label + " (jax.grad backward)", cells.autodiff_backward(cell), u))
  for label, cell, unroll in variants:
    box[label], step, infer = seqjax_fns(cell, xs, unroll=unroll)

    def seqjax_train(label=label, step=step):
      box[label] = step(box[label], xs)
      jax.block_until_ready(box[label])

    contenders[label] = (seqjax_train, lambda label=label, infer=infer: jax.block_until_ready(
        infer(box[label][0], xs)))
  ours_label = next(iter(contenders))
  cell = variants[0][1]  # the memory table's cell: the first row's (layers, dtype)
  versions = {"jax": jax.__version__, "device": str(jax.devices()[0]),
              "backend": jax.default_backend()}
  if "flax" in ANCHORS.value and name in FLAX_CELLS:
    import flax
    fstate, fstep, finfer = flax_fns(name, xs)
    box["flax"] = fstate

    def flax_train():
      box["flax"] = fstep(box["flax"], xs)
      jax.block_until_ready(box["flax"])

    contenders[f"flax nn.RNN({FLAX_CELLS[name]})"] = (
        flax_train, lambda: jax.block_until_ready(finfer(box["flax"][0], xs)))
    versions["flax"] = flax.__version__
  if "cudnn" in ANCHORS.value and name == "lstm" and jax.default_backend() == "gpu":
    box["cudnn"], cstep, capply = cudnn_fns(xs)

    def cudnn_train():
      box["cudnn"] = cstep(box["cudnn"], xs)
      jax.block_until_ready(box["cudnn"])

    contenders["cuDNN (jax.experimental.rnn)"] = (
        cudnn_train, lambda: jax.block_until_ready(capply(box["cudnn"][0], xs)))
  if "torch" in ANCHORS.value and name in TORCH_CELLS:
    try:
      ttrain, tinfer, tversion = torch_fns(name, np.asarray(xs))
      contenders[f"torch.nn.{TORCH_CELLS[name]}"] = (ttrain, tinfer)
      versions["torch"] = tversion
    except ImportError:
      print("torch not importable: its rows are skipped", file=sys.stderr)

  times = {(label, kind): [] for label in contenders for kind in ("train", "infer")}
  for label, (train, inf) in contenders.items():  # warm-up: compile and first runs
    train(); train(); inf(); inf()
  for _ in range(REPEATS.value):
    for label, (train, inf) in contenders.items():
      times[(label, "train")].append(_time(train))
      times[(label, "infer")].append(_time(inf))

  results = []
  ours = {kind: statistics.median(times[(ours_label, kind)]) for kind in ("train", "infer")}
  print(f"B={B} T={T} F={F} H={HIDDEN.value} | {versions}")
  print(f"{'implementation':34s} {'kind':6s} {'ms/step':>9s} {'tokens/s':>10s} {'anchor/seqjax':>14s}")
  for (label, kind), ts in times.items():
    med = statistics.median(ts)
    ratio = med / ours[kind]
    results.append({"implementation": label, "kind": kind, "ms": 1000 * med,
                    "tokens_per_s": B * T / med, "anchor_over_seqjax": ratio})
    print(f"{label:34s} {kind:6s} {1000 * med:9.1f} {B * T / med:10.0f} {ratio:14.2f}")
  report = {"command": "python -m launch.benchmark " + " ".join(sys.argv[1:]),
            "versions": versions, "rows": results}
  if MEMORY.value:
    report["memory"] = memory_table(cell, [int(t) for t in MEMORY.value])
    print("train-step XLA temporaries (MiB), outputs read at the last step | at every step")
    keys = ("plain", "remat", "plain_per_step", "remat_per_step")
    print(f"{'T':>8s} {'plain':>10s} {'remat':>10s} | {'plain':>10s} {'remat':>10s}")
    for row in report["memory"]:
      mib = ["no compile" if row[k] is None else f"{row[k] / 2**20:.1f}" for k in keys]
      print(f"{row['T']:8d} {mib[0]:>10s} {mib[1]:>10s} | {mib[2]:>10s} {mib[3]:>10s}")
  if RUNS.value:
    report["runs"] = runs_table(cell, counts)
    print(f"time(N runs) / (N x time(1 run)), {jax.default_backend()}; the runner's way here: "
          f"{'loop' if train_runs_looped() else 'vmap'}")
    print(f"{'runs N':>7s} {'vmap ms':>9s} {'ratio':>6s} {'loop ms':>9s} {'ratio':>6s}")
    for row in report["runs"]:
      print(f"{row['runs']:7d} {row['ms_vmap']:9.1f} {row['ratio_vmap']:6.3f} "
            f"{row['ms_loop']:9.1f} {row['ratio_loop']:6.3f}")
  if JSON.value:
    with open(JSON.value, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  app.run(main)

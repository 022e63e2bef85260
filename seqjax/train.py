"""Training and evaluation: one jitted optax step (data sampled inside it), on-device metrics.

Many runs in one program: a `GroupState` holds N runs' states stacked along a leading `runs` axis,
and the group's step is the one-run step vmapped over that axis (each run with its own seed, data
stream and learning rate); evaluation likewise. (On CPU, where that measured slower than the runs
one by one, the same program loops over the runs instead: `over_runs`.)
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from seqjax import _plugins, models, parallel
from seqjax.cells.base import Cell
from seqjax.tasks.base import Batch, Task


class TrainState(NamedTuple):
  step: jax.Array   # int32 []: steps taken; also indexes the data stream
  params: Any
  opt_state: Any


class StreamState(NamedTuple):
  """TrainState of a task whose batches follow one another (`Task.stream`, text): also the cell
  state each of the batch_size streams ended its last window in [batch_size, ...], carried into
  its next window (checkpointed with the rest, so a resumed run goes on exactly)."""
  step: jax.Array
  params: Any
  opt_state: Any
  carry: Any


class Config(NamedTuple):
  """What the step functions close over (everything static)."""
  cell: Cell
  task: Task
  optimizer: optax.GradientTransformation
  batch_size: int
  unroll: Optional[int] = None  # None: seqjax.default_unroll()
  remat: bool = False
  prefix_len: int = 3      # series tasks: observed steps before free running
  feedback: str = "teacher"  # series tasks' training inputs: teacher | free | scheduled
  teacher_forcing_decay_steps: int = 10000  # scheduled: steps over which p falls from 1 to 0
  mesh: Optional[jax.sharding.Mesh] = None  # data parallel over its `data` axis; None: 1 device
  readout: str = "linear"  # models.READOUTS
  dropout: float = 0.0  # on each layer's input and the readout's input, training only


def teacher_forcing(cfg: Config, step):
  """p, the probability of feeding the true previous value during training at `step`."""
  if cfg.feedback == "teacher":
    return 1.0
  if cfg.feedback == "free":
    return 0.0
  return jnp.clip(1.0 - step / cfg.teacher_forcing_decay_steps, 0.0, 1.0)


# optax's optimizers, each (rate, weight_decay, momentum) -> GradientTransformation; rate: a
# number or a schedule (a function of the update count).
_OPTIMIZERS = {
    "adam": lambda rate, weight_decay, momentum: optax.adam(rate),
    "adamw": lambda rate, weight_decay, momentum: optax.adamw(rate, weight_decay=weight_decay),
    "sgd": lambda rate, weight_decay, momentum: optax.sgd(rate, momentum=momentum or None),
    "rmsprop": lambda rate, weight_decay, momentum: optax.rmsprop(rate, momentum=momentum or None),
    "lion": lambda rate, weight_decay, momentum: optax.lion(rate, weight_decay=weight_decay),
}
OPTIMIZERS = tuple(_OPTIMIZERS)
SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear")


def lr_multiplier(lr_schedule: str = "constant", warmup_steps: int = 0,
                  decay_steps: Optional[int] = None) -> Optional[optax.Schedule]:
  """The schedule as a multiplier of the run's own learning rate (1 at its peak, 0 at its end),
  a function of the update count; None for "constant". Past `decay_steps` (warmup included) it
  stays at its end value."""
  if lr_schedule == "constant":
    return None
  if lr_schedule not in SCHEDULES or not decay_steps or decay_steps < 1:
    raise ValueError(f"lr_schedule {lr_schedule!r} needs decay_steps >= 1 (got {decay_steps})")
  if lr_schedule == "cosine":
    return optax.cosine_decay_schedule(1.0, decay_steps)
  if lr_schedule == "linear":
    return optax.linear_schedule(1.0, 0.0, decay_steps)
  return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps, decay_steps)


def make_optimizer(learning_rate: float, clip_norm: Optional[float] = None,
                   optimizer: str = "adam", weight_decay: float = 0.0, momentum: float = 0.0,
                   lr_schedule: str = "constant", warmup_steps: int = 0,
                   decay_steps: Optional[int] = None):
  """An optax optimizer (adam: the paper's setting; or MODULE:NAME, a factory(learning_rate) of
  yours), optionally after global-norm gradient clipping, its rate `learning_rate` times the
  schedule (`lr_multiplier`).

  The learning rate is data in the optimizer state (optax.inject_hyperparams), so runs with
  different rates share one program; `set_learning_rate` changes it. The schedule multiplies it
  inside the update, so it scales every run's own rate. (constant: the rate alone, no schedule
  state; adam then is exactly the optimizer of the runs made before schedules existed.)
  """
  multiplier = lr_multiplier(lr_schedule, warmup_steps, decay_steps)
  make = _OPTIMIZERS.get(optimizer) or _user_optimizer(optimizer)

  def build(learning_rate):
    rate = learning_rate if multiplier is None else \
        (lambda count: learning_rate * multiplier(count))
    opt = make(rate, weight_decay, momentum)
    return optax.chain(optax.clip_by_global_norm(clip_norm), opt) if clip_norm else opt

  return optax.inject_hyperparams(build)(learning_rate=learning_rate)


def _user_optimizer(spec: str):
  """MODULE:NAME, a factory(learning_rate) of yours, as one of _OPTIMIZERS (weight_decay and
  momentum are the built-ins' only)."""
  _, factory = _plugins.load(spec)
  return lambda rate, weight_decay, momentum: factory(rate)


def set_learning_rate(state: TrainState, learning_rate) -> TrainState:
  opt_state = state.opt_state
  hyperparams = dict(opt_state.hyperparams, learning_rate=jnp.asarray(learning_rate, jnp.float32))
  return state._replace(opt_state=opt_state._replace(hyperparams=hyperparams))


def init_state(cfg: Config, key) -> TrainState:
  params = models.init(cfg.cell, key, cfg.task.input_size, cfg.task.output_size,
                       readout=cfg.readout)
  step = jnp.zeros((), jnp.int32)
  if cfg.task.stream is not None:
    # copies: a cell's initial state may share one buffer between fields, and the step donates
    carry = jax.tree.map(jnp.array, cfg.cell.initial_state(params["cell"], (cfg.batch_size,)))
    return StreamState(step, params, cfg.optimizer.init(params), carry)
  return TrainState(step, params, cfg.optimizer.init(params))


def outputs(cfg: Config, params, batch: Batch):
  return models.apply(cfg.cell, params, batch.xs, batch.lengths, per_step=cfg.task.per_step,
                      unroll=cfg.unroll, remat=cfg.remat)


def batch_losses(cfg: Config, params, batch: Batch) -> dict:
  """Per-example [B] losses and metrics (the task's, plus free_run_mse for series tasks)."""
  values = cfg.task.losses(outputs(cfg, params, batch), batch)
  if cfg.task.feedback_channel is not None:
    preds = models.closed_loop(cfg.cell, params, batch.xs, cfg.prefix_len,
                               cfg.task.feedback_channel, unroll=cfg.unroll)
    err = (preds[..., cfg.prefix_len:, 0] - batch.ys[..., cfg.prefix_len:]) ** 2
    values["free_run_mse"] = jnp.mean(err, axis=-1)
  return values


def data_key(seed: int):
  """The training data stream: step i's batch is drawn from fold_in(data_key, i), so a resumed
  run sees exactly the batches an uninterrupted one would."""
  return jax.random.fold_in(jax.random.key(seed), 1)


def eval_key(seed: int):
  return jax.random.fold_in(jax.random.key(seed), 2)


def param_key(seed: int):
  return jax.random.fold_in(jax.random.key(seed), 0)


def make_train_step(cfg: Config, seed: int):
  """state -> (state, metrics): samples its batch, steps the optimizer; donates `state`."""
  step = one_run_step(cfg)
  return jax.jit(lambda state: step(state, seed), donate_argnums=0)


def one_run_step(cfg: Config):
  """(state, seed) -> (state, metrics), not jitted: one run's step, its batch drawn from the
  seed's data stream at index state.step.

  Series tasks with feedback "free" or "scheduled" train through the closed loop: the model's
  own predictions are fed back (with probability 1 - p per sequence and step), and the gradient
  flows through them. A stream task (text) trains on its next windows (`stream_step`).
  """
  if cfg.task.stream is not None:
    return stream_step(cfg)

  def loss_fn(params, batch, p, key):
    if cfg.dropout:
      preds = models.apply_dropout(cfg.cell, params, batch.xs, batch.lengths, cfg.task.per_step,
                                   cfg.dropout, jax.random.fold_in(key, 1), unroll=cfg.unroll,
                                   remat=cfg.remat)
    elif cfg.feedback == "teacher":
      preds = outputs(cfg, params, batch)
    else:
      preds = models.closed_loop(cfg.cell, params, batch.xs, cfg.prefix_len,
                                 cfg.task.feedback_channel, teacher_prob=p, key=key,
                                 unroll=cfg.unroll)
    values = cfg.task.losses(preds, batch)
    return jnp.mean(values["loss"]), values

  def train_step(state: TrainState, seed):
    key = jax.random.fold_in(data_key(seed), state.step)
    batch = parallel.shard_batch(cfg.mesh, cfg.task.sample(key, cfg.batch_size))
    p = teacher_forcing(cfg, state.step)
    (loss, values), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, p, jax.random.fold_in(key, 1))
    updates, opt_state = cfg.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {k: jnp.mean(v) for k, v in values.items()}
    metrics["grad_norm"] = optax.tree.norm(grads)  # before any clipping (the optimizer's)
    if cfg.feedback == "scheduled":
      metrics["teacher_forcing"] = p
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def stream_step(cfg: Config):
  """(StreamState, seed) -> (StreamState, metrics), not jitted: one step of stateful truncated
  BPTT. Window k = step mod W of every stream (gathered on the device by the step's index),
  started from the state the stream's window before ended in (no gradient through it), or from
  the initial state at k = 0; the state it ends in is carried to the next step. Dropout masks
  come from the seed's data stream at the step."""
  stream, B = cfg.task.stream, cfg.batch_size
  W = stream.windows(B)

  def loss_fn(params, carry, first, tokens, key):
    initial = cfg.cell.initial_state(params["cell"], (B,))
    carry = jax.tree.map(lambda i, c: jnp.where(first, i, jax.lax.stop_gradient(c)),
                         initial, carry)
    batch = Batch(stream.inputs(tokens[:, :-1]), tokens[:, 1:].astype(jnp.int32), None)
    final, logits = models.apply_from(cfg.cell, params, batch.xs, carry, cfg.dropout, key,
                                      unroll=cfg.unroll, remat=cfg.remat)
    values = cfg.task.losses(logits, batch)
    return jnp.mean(values["loss"]), (values, final)

  def train_step(state: StreamState, seed):
    tokens = parallel.shard_batch(cfg.mesh, stream.window(state.step, B))
    key = jax.random.fold_in(data_key(seed), state.step)
    (_, (values, final)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.carry, state.step % W == 0, tokens, key)
    updates, opt_state = cfg.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {k: jnp.mean(v) for k, v in values.items()}
    return StreamState(state.step + 1, params, opt_state, jax.lax.stop_gradient(final)), metrics

  return train_step


def stream_evaluate_fn(cfg: Config):
  """(params, tokens uint8 [n]) -> means over the n - 1 predictions of a split (text).

  The split is cut into batch_size contiguous streams of L = ceil((n - 1) / batch_size)
  predictions (the last ones shorter), each run window after window from the initial state with
  its state carried, no dropout: every token but the first is predicted exactly once (padding
  past a stream's end is masked out)."""
  stream, S, T = cfg.task.stream, cfg.batch_size, cfg.task.seq_len

  def evaluate(params, tokens):
    n = tokens.shape[0]
    P = n - 1  # predictions: input tokens[j], target tokens[j + 1]
    L = -(-P // S)
    num_windows = -(-L // T)
    offsets = jnp.arange(T, dtype=jnp.int32)[None] + \
        jnp.arange(S, dtype=jnp.int32)[:, None] * L  # [S, T]

    def one(carry, w):
      state, sums = carry
      in_stream = w * T + jnp.arange(T, dtype=jnp.int32)[None]  # [1, T]
      j = offsets + w * T  # [S, T] prediction index in the split
      valid = ((in_stream < L) & (j < P)).astype(jnp.float32)
      j = jnp.clip(j, 0, P - 1)
      xs = stream.inputs(tokens[j])
      state, logits = models.apply_from(cfg.cell, params, xs, state, unroll=cfg.unroll)
      values = stream.losses(logits, tokens[j + 1].astype(jnp.int32))
      sums = {k: sums[k] + jnp.sum(v * valid) for k, v in values.items()}
      return (state, sums), None

    state = cfg.cell.initial_state(params["cell"], (S,))
    zeros = {k: jnp.zeros((), jnp.float32) for k in jax.eval_shape(
        stream.losses, jnp.zeros((1, cfg.task.output_size)), jnp.zeros((1,), jnp.int32))}
    (_, sums), _ = jax.lax.scan(one, (state, zeros), jnp.arange(num_windows, dtype=jnp.int32))
    means = {k: v / P for k, v in sums.items()}
    means["perplexity"] = jnp.exp(means["loss"])
    return means

  return evaluate


def make_evaluate(cfg: Config):
  """(params, held_out) -> mean of every per-example metric over the whole held-out set."""
  return jax.jit(evaluate_fn(cfg))


def evaluate_fn(cfg: Config):
  """(params, held_out) -> mean of every per-example metric over the whole held-out set.

  The set is evaluated in chunks of batch_size (the last one padded and masked out), so any
  size fits in memory; all of it stays on the device. A stream task's held-out set is a split's
  tokens, evaluated by `stream_evaluate_fn`.
  """
  if cfg.task.stream is not None:
    return stream_evaluate_fn(cfg)
  chunk = cfg.batch_size

  def evaluate(params, held_out: Batch):
    n = held_out.xs.shape[0]
    num_chunks = -(-n // chunk)
    pad = num_chunks * chunk - n

    def split(a):
      a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a
      return a.reshape(num_chunks, chunk, *a.shape[1:])

    chunks = jax.tree.map(split, held_out)
    weights = split(jnp.ones((n,), jnp.float32))

    def one(inputs):
      batch, w = parallel.shard_batch(cfg.mesh, inputs)
      values = batch_losses(cfg, params, batch)
      return {k: jnp.sum(v * w) for k, v in values.items()}

    sums = jax.lax.map(one, (chunks, weights))
    means = {k: jnp.sum(v) / n for k, v in sums.items()}
    if cfg.task.classification:
      means["perplexity"] = jnp.exp(means["loss"])
    return means

  return evaluate


class GroupState(NamedTuple):
  runs: TrainState  # every leaf with a leading [R] axis, one entry per run
  alive: jax.Array  # bool [R]: False from the step whose loss was not finite on (frozen since)


def over_runs(fn, num_runs: int, in_axes=0, one_at_a_time: bool = False):
  """fn mapped over the leading `runs` axis of its arguments (in_axes: 0, None for an argument
  every run shares, or a tuple of those per argument): jax.vmap, or with `one_at_a_time`
  jax.lax.map, a loop over the runs inside the program (on CPU vmap's batched matmuls are slower
  than the runs one by one; on a GPU vmap is what fills the chip). One run: fn itself on the
  squeezed axis, the one-run program."""
  if num_runs > 1 and not one_at_a_time:
    return jax.vmap(fn, in_axes=in_axes)

  def mapped(*args):
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    per_run = [a for a, ax in zip(args, axes) if ax is not None]

    def one(items):  # the shared arguments stay out of the map
      items = iter(items)
      return fn(*[a if ax is None else next(items) for a, ax in zip(args, axes)])

    if num_runs > 1:
      return jax.lax.map(one, per_run)
    return jax.tree.map(lambda x: x[None], one(jax.tree.map(lambda x: x[0], per_run)))

  return mapped


def runs_one_at_a_time(runs_spread_over_devices: bool) -> bool:
  """The measured faster way to map a group's runs on this backend (see `over_runs`)."""
  return jax.default_backend() == "cpu" and not runs_spread_over_devices


def make_group_step(cfg: Config, num_runs: int, state_sharding=None, out_sharding=None,
                    one_at_a_time: bool = False):
  """(GroupState, seeds int32 [R]) -> (GroupState, metrics {name: [R]}); donates the state.

  The one-run step mapped over the runs (`over_runs`). A run whose loss or new params are not
  finite (metrics["finite"] False) keeps the state it had before that step and stays frozen, as
  does a run whose `alive` the caller cleared; the others go on.
  """
  step = one_run_step(cfg)

  def guarded(state, alive, seed):
    new, metrics = step(state, seed)
    # the new params too: a finite loss can come with a non-finite update, and the frozen state
    # must be the last finite one
    finite = jnp.isfinite(metrics["loss"]) & jnp.all(jnp.array(
        [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new.params)]))
    ok = alive & finite
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state), ok, \
        dict(metrics, finite=finite)

  def group_step(group: GroupState, seeds):
    runs, alive, metrics = over_runs(guarded, num_runs, one_at_a_time=one_at_a_time)(
        group.runs, group.alive, seeds)
    return GroupState(runs, alive), metrics

  shardings = None if state_sharding is None else (state_sharding, out_sharding)
  return jax.jit(group_step, donate_argnums=0, out_shardings=shardings)


def make_group_evaluate(cfg: Config, num_runs: int, shared_held_out: bool, out_sharding=None,
                        one_at_a_time: bool = False):
  """(params [R], held_out [R] or one shared set) -> {metric: [R]}."""
  evaluate = over_runs(evaluate_fn(cfg), num_runs, in_axes=(0, None if shared_held_out else 0),
                       one_at_a_time=one_at_a_time)
  return jax.jit(evaluate, out_shardings=out_sharding)

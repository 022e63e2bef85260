"""The Flax adapters against seqjax.scan: same params, outputs, carries and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import seqjax
from seqjax import cells
from seqjax.interop import LinenCell, LinenRNN, NnxCell, NnxRNN
from helpers import assert_trees_close, random_params

B, T, F = 3, 6, 3
LENGTHS = np.array([T, 3, 1])  # no 0: flax's carry for a 0-length sequence is the one after T steps
MAKERS = {"rnn": lambda: cells.rnn(4), "lstm": lambda: cells.lstm(4),
          "gru": lambda: cells.gru(4), "rwa": lambda: cells.rwa(4),
          "lstm+rwa": lambda: cells.stack([cells.lstm(5), cells.rwa(4)])}
TOL = dict(rtol=1e-5, atol=1e-6)
# Gradients summed over the steps in float32 by two differentiations (flax's per-step autodiff,
# seqjax's hand-written pass) differ in the order of their additions: a few ulps of the largest
# term (2.4e-6 on an rnn gradient entry of 0.14 built from O(1) terms, at the suite's XLA
# optimisation level 0).
GRAD_TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(params=list(MAKERS))
def cell(request):
  return MAKERS[request.param]()


def inputs():
  return jax.random.normal(jax.random.key(1), (B, T, F))


def perturbed(cell, seed=2):
  return random_params(cell.init(jax.random.key(seed), F), jax.random.key(seed + 1))


def loss(carry, hs):
  """Touches every output and every carry leaf, so the gradient checks cover the final state."""
  w = jnp.cos(jnp.arange(hs.size, dtype=hs.dtype)).reshape(hs.shape)
  return jnp.sum(hs * w) + sum(jnp.sum(jnp.tanh(leaf)) for leaf in jax.tree.leaves(carry))


def assert_valid_steps_close(hs, expected, lengths):
  # Flax leaves whatever the cell computes on padded steps (seqjax.scan zeroes them): compare
  # only the steps t < length.
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(hs[b, :n], expected[b, :n], **TOL)


def flip_valid(xs, lengths):
  """Reverses each sequence's first lengths[b] steps, leaving its padding at the end."""
  return jnp.stack([jnp.concatenate([x[:n][::-1], x[n:]]) for x, n in zip(xs, lengths)])


def by_path(tree):
  """{(0, "W_x"): leaf, ...} for a plain pytree or an nnx State (whose leaves sit under .value)."""
  return {tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path
                if not isinstance(k, jax.tree_util.GetAttrKey)): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# flax.linen


def test_linen_init_is_cell_init(cell):
  keys = []

  def spy_init(key, input_size):
    # flax also calls the initialiser under jax.eval_shape to check shapes: keep the real calls.
    if not isinstance(key, jax.core.Tracer):
      keys.append(key)
    return cell.init(key, input_size)

  variables = nn.RNN(LinenCell(cell._replace(init=spy_init))).init(jax.random.key(0), inputs())
  assert len(keys) == 1
  assert list(variables) == ["params"] and list(variables["params"]) == ["cell"]
  assert list(variables["params"]["cell"]) == ["cell"]
  assert_trees_close(variables["params"]["cell"]["cell"], cell.init(keys[0], F), rtol=0, atol=0)


@pytest.mark.slow
def test_linen_matches_scan_outputs_carry_and_grads(cell):
  rnn = nn.RNN(LinenCell(cell), return_carry=True)
  xs, P = inputs(), perturbed(cell)

  def linen_run(P):
    carry, hs = rnn.apply({"params": {"cell": {"cell": P}}}, xs)
    return loss(carry, hs), (carry, hs)

  def scan_run(P):
    final_state, hs = seqjax.scan(cell, P, xs)
    return loss(final_state, hs), (final_state, hs)

  (_, (carry, hs)), grads = jax.jit(jax.value_and_grad(linen_run, has_aux=True))(P)
  (_, (final_state, expected)), want = jax.jit(jax.value_and_grad(scan_run, has_aux=True))(P)
  assert_trees_close(hs, expected, **TOL)
  assert_trees_close(carry, final_state, **TOL)
  assert_trees_close(grads, want, **GRAD_TOL)


def test_linen_seq_lengths(cell):
  rnn = nn.RNN(LinenCell(cell), return_carry=True)
  xs, P = inputs(), perturbed(cell)
  carry, hs = rnn.apply({"params": {"cell": {"cell": P}}}, xs, seq_lengths=jnp.asarray(LENGTHS))
  final_state, expected = seqjax.scan(cell, P, xs, lengths=jnp.asarray(LENGTHS))
  assert_trees_close(carry, final_state, **TOL)
  assert_valid_steps_close(hs, expected, LENGTHS)


@pytest.mark.slow
def test_linen_bidirectional_halves_are_scans():
  fwd, bwd = cells.stack([cells.lstm(5), cells.rwa(4)]), cells.gru(3)
  bi = nn.Bidirectional(nn.RNN(LinenCell(fwd)), nn.RNN(LinenCell(bwd)), return_carry=True)
  xs, lengths = inputs(), jnp.asarray(LENGTHS)
  variables = bi.init(jax.random.key(0), xs, seq_lengths=lengths)
  assert jax.tree.structure(variables["params"]["forward_rnn"]["cell"]["cell"]) == \
      jax.tree.structure(fwd.init(jax.random.key(0), F))
  Pf, Pb = perturbed(fwd), perturbed(bwd)
  variables = {"params": {"forward_rnn": {"cell": {"cell": Pf}},
                          "backward_rnn": {"cell": {"cell": Pb}}}}
  (carry_f, carry_b), out = bi.apply(variables, xs, seq_lengths=lengths)
  assert out.shape == (B, T, 4 + 3)
  state_f, hs_f = seqjax.scan(fwd, Pf, xs, lengths=lengths)
  # The backward half reads each sequence's valid steps last-to-first and is put back in order.
  state_b, hs_b = seqjax.scan(bwd, Pb, flip_valid(xs, LENGTHS), lengths=lengths)
  assert_trees_close(carry_f, state_f, **TOL)
  assert_trees_close(carry_b, state_b, **TOL)
  assert_valid_steps_close(out[..., :4], hs_f, LENGTHS)
  assert_valid_steps_close(out[..., 4:], flip_valid(hs_b, LENGTHS), LENGTHS)


def test_linen_streaming_with_initial_carry():
  cell = cells.stack([cells.lstm(5), cells.rwa(4)])
  rnn = nn.RNN(LinenCell(cell), return_carry=True)
  xs, variables = inputs(), {"params": {"cell": {"cell": perturbed(cell)}}}
  carry, hs_a = rnn.apply(variables, xs[:, :2])
  carry, hs_b = rnn.apply(variables, xs[:, 2:], initial_carry=carry)
  final_state, expected = seqjax.scan(cell, variables["params"]["cell"]["cell"], xs)
  assert_trees_close(jnp.concatenate([hs_a, hs_b], axis=1), expected, **TOL)
  assert_trees_close(carry, final_state, **TOL)


def test_linen_cell_on_its_own_like_flax_cells(cell):
  """What flax's own cells allow: a carry from the unbound cell, then init and apply with it."""
  key, x0 = jax.random.key(0), inputs()[:, 0]
  flax_cell = nn.LSTMCell(4)
  flax_carry = flax_cell.initialize_carry(key, (B, F))
  flax_cell.apply(flax_cell.init(key, flax_carry, x0), flax_carry, x0)

  module = LinenCell(cell)
  carry = module.initialize_carry(key, (B, F))
  variables = module.init(key, carry, x0)
  sizes = [c.hidden_size for c in (cell.layers or (cell,))]
  assert sorted({leaf.shape for leaf in jax.tree.leaves(carry)}) == \
      sorted({(B, h) for h in sizes})
  assert all(leaf.shape == (B, 4) for leaf in flax_carry)
  # The same carry from the bound module (as nn.RNN makes it) and from the RNN's own cell.
  assert_trees_close(module.bind(variables).initialize_carry(key, (B, F)), carry, rtol=0, atol=0)
  assert_trees_close(nn.RNN(module).cell.initialize_carry(key, (B, F)), carry, rtol=0, atol=0)
  P = perturbed(cell)
  assert_trees_close(module.apply({"params": {"cell": P}}, carry, x0),
                     cell.step(P, cell.initial_state(P, (B,)), x0), **TOL)
  with pytest.raises(TypeError, match="seqjax Cell"):
    LinenCell(nn.LSTMCell(4))


def test_carry_init_like_flax():
  key, normal = jax.random.key(5), nn.initializers.normal(1.0)
  # The LSTM's (c, h) and the GRU's h are exactly what flax's LSTM and GRU cells make.
  c, h = nn.LSTMCell(4, carry_init=normal).initialize_carry(key, (B, F))
  state = LinenCell(cells.lstm(4), carry_init=normal).initialize_carry(key, (B, F))
  assert_trees_close((state.c, state.h), (c, h), rtol=0, atol=0)
  h = nn.GRUCell(4, carry_init=normal).initialize_carry(key, (B, F))
  assert_trees_close(LinenCell(cells.gru(4), carry_init=normal).initialize_carry(key, (B, F)).h,
                     h, rtol=0, atol=0)

  flax_cell = nnx.LSTMCell(F, 4, rngs=nnx.Rngs(0))
  c, h = flax_cell.initialize_carry((B, F), nnx.Rngs(carry=7), carry_init=nnx.initializers.normal())
  state = NnxCell(cells.lstm(4), F).initialize_carry((B, F), nnx.Rngs(carry=7),
                                                     carry_init=nnx.initializers.normal())
  assert_trees_close((state.c, state.h), (c, h), rtol=0, atol=0)
  with pytest.raises(ValueError, match="RNGs"):
    flax_cell.initialize_carry((B, F), carry_init=nnx.initializers.ones)
  with pytest.raises(ValueError, match="rngs"):
    NnxCell(cells.lstm(4), F).initialize_carry((B, F), carry_init=nnx.initializers.ones)

  # A stack: every leaf of every layer's state is the initializer's (the RWA's n, d, m too, as
  # flax's own test of initialize_carry(..., carry_init=ones) asks of its cells).
  cell, xs = cells.stack([cells.lstm(5), cells.rwa(4)]), inputs()
  module = NnxCell(cell, F)
  module.set_params(P := perturbed(cell))
  carry = module.initialize_carry((B, F), nnx.Rngs(0), carry_init=nnx.initializers.ones)
  start = jax.tree.map(jnp.ones_like, cell.initial_state(P, (B,)))
  assert_trees_close(carry, start, rtol=0, atol=0)
  want = seqjax.scan(cell, P, xs, initial_state=start)
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(want))
  assert_trees_close(nnx.RNN(module, return_carry=True)(xs, initial_carry=carry), want, **TOL)


def test_carry_init_fills_every_leaf_for_every_cell(cell):
  P = perturbed(cell)
  linen = LinenCell(cell, carry_init=nn.initializers.ones).initialize_carry(jax.random.key(0),
                                                                           (B, F))
  module = NnxCell(cell, F)
  nnx_carry = module.initialize_carry((B, F), nnx.Rngs(0), carry_init=nnx.initializers.ones)
  start = jax.tree.map(jnp.ones_like, cell.initial_state(P, (B,)))
  assert_trees_close(linen, start, rtol=0, atol=0)
  assert_trees_close(nnx_carry, start, rtol=0, atol=0)
  # A key of its own for every leaf: no two leaves drawn alike.
  drawn = jax.tree.leaves(LinenCell(cell, carry_init=nn.initializers.normal(1.0))
                          .initialize_carry(jax.random.key(0), (B, F)))
  assert len({np.asarray(leaf).ravel()[0].item() for leaf in drawn}) == len(drawn)


def test_carry_of_a_cell_whose_start_reads_its_params_is_refused():
  base = cells.rnn(4)
  cell = base._replace(name="mine", initial_state=lambda p, batch_shape=(): cells.RNNState(
      jnp.broadcast_to(jnp.tanh(p["b"]), (*batch_shape, 4))))
  for make in (lambda: LinenCell(cell).initialize_carry(jax.random.key(0), (B, F)),
               lambda: NnxCell(cell, F).initialize_carry((B, F))):
    with pytest.raises(ValueError, match="'mine'.*initial_carry=cell.initial_state"):
      make()


RWA_CELLS = {"rwa": lambda: cells.rwa(4),
             "lstm+rwa": lambda: cells.stack([cells.lstm(5), cells.rwa(4)])}


@pytest.mark.parametrize("name", list(RWA_CELLS))
@pytest.mark.slow
def test_rwa_external_carry_gives_s0_its_gradient_and_never_goes_stale(name):
  """The carry a user makes with initialize_carry and passes as initial_carry: the gradients
  (s0's included) are those of seqjax.scan from the cell's own start, and after the params change
  the same carry gives what the new params give from their own start."""
  cell, xs = RWA_CELLS[name](), inputs()
  P1, P2 = perturbed(cell, seed=2), perturbed(cell, seed=7)

  def scan_loss(P):
    final_state, hs = seqjax.scan(cell, P, xs)
    return loss(final_state, hs), (final_state, hs)

  (_, scan_out1), want1 = jax.jit(jax.value_and_grad(scan_loss, has_aux=True))(P1)
  _, scan_out2 = jax.jit(scan_loss)(P2)
  s0 = lambda P: P["s0"] if name == "rwa" else P[1]["s0"]  # noqa: E731
  assert float(jnp.abs(s0(want1)).max()) > 1e-2  # s0 matters here, so a lost gradient shows

  # flax.nnx
  module = NnxCell(cell, F)
  module.set_params(P1)
  carry = module.initialize_carry((B, F))
  rnn = nnx.RNN(module, return_carry=True)

  def nnx_loss(rnn):
    out = rnn(xs, initial_carry=carry)
    return loss(*out), out

  (_, out1), grads = nnx.jit(nnx.value_and_grad(nnx_loss, has_aux=True))(rnn)
  assert_trees_close(out1, scan_out1, **TOL)
  got = by_path(grads["cell"]["params"])
  for path, leaf in by_path(want1).items():
    np.testing.assert_allclose(got[path], leaf, **TOL, err_msg=str(path))
  module.set_params(P2)
  assert_trees_close(rnn(xs, initial_carry=carry), scan_out2, **TOL)

  # flax.linen
  rnn = nn.RNN(LinenCell(cell), return_carry=True)
  carry = rnn.cell.initialize_carry(jax.random.key(0), (B, F))

  def linen_loss(P):
    out = rnn.apply({"params": {"cell": {"cell": P}}}, xs, initial_carry=carry)
    return loss(*out), out

  (_, out1), grads = jax.jit(jax.value_and_grad(linen_loss, has_aux=True))(P1)
  assert_trees_close(out1, scan_out1, **TOL)
  assert_trees_close(grads, want1, **TOL)
  assert_trees_close(jax.jit(linen_loss)(P2)[1], scan_out2, **TOL)


# flax.nnx


@pytest.mark.slow
def test_nnx_matches_scan_before_and_after_set_params_and_grads(cell):
  module = NnxCell(cell, input_size=F, rngs=nnx.Rngs(0))
  assert_trees_close(module.get_params(), cell.init(nnx.Rngs(0).params(), F), rtol=0, atol=0)
  assert all(isinstance(v, nnx.Param) for v in jax.tree.leaves(
      module.params, is_leaf=lambda x: isinstance(x, nnx.Variable)))
  rnn, xs = nnx.RNN(module, return_carry=True), inputs()

  carry, hs = rnn(xs)
  final_state, expected = seqjax.scan(cell, module.get_params(), xs)
  assert_trees_close(hs, expected, **TOL)
  assert_trees_close(carry, final_state, **TOL)

  P = perturbed(cell)
  module.set_params(P)
  assert_trees_close(module.get_params(), P, rtol=0, atol=0)

  @nnx.jit
  def nnx_run(rnn):
    def run(rnn):
      carry, hs = rnn(xs)
      return loss(carry, hs), (carry, hs)
    return nnx.value_and_grad(run, has_aux=True)(rnn)

  def scan_run(P):
    final_state, hs = seqjax.scan(cell, P, xs)
    return loss(final_state, hs), (final_state, hs)

  (_, (carry, hs)), grads = nnx_run(rnn)
  (_, (final_state, expected)), want = jax.jit(jax.value_and_grad(scan_run, has_aux=True))(P)
  assert_trees_close(hs, expected, **TOL)
  assert_trees_close(carry, final_state, **TOL)
  got, want = by_path(grads["cell"]["params"]), by_path(want)
  assert sorted(got) == sorted(want)
  for path in want:
    np.testing.assert_allclose(got[path], want[path], **GRAD_TOL, err_msg=str(path))


def test_nnx_seq_lengths(cell):
  module = NnxCell(cell, input_size=F, rngs=nnx.Rngs(0))
  P = perturbed(cell)
  module.set_params(P)
  xs, lengths = inputs(), jnp.asarray(LENGTHS)
  carry, hs = nnx.RNN(module, return_carry=True)(xs, seq_lengths=lengths)
  final_state, expected = seqjax.scan(cell, P, xs, lengths=lengths)
  assert_trees_close(carry, final_state, **TOL)
  assert_valid_steps_close(hs, expected, LENGTHS)


def test_nnx_set_params_checks_structure_and_shapes():
  module = NnxCell(cells.stack([cells.lstm(5), cells.rwa(4)]), input_size=F)
  P = module.get_params()
  with pytest.raises(ValueError, match="structure"):
    module.set_params(P[0])
  with pytest.raises(ValueError, match="shape"):
    bad = jax.tree.map(lambda a: a + 1, P)
    module.set_params((bad[0], {**bad[1], "s0": jnp.zeros(5)}))
  assert_trees_close(module.get_params(), P, rtol=0, atol=0)  # a refused write changes nothing


# Whole-sequence modules: seqjax.scan inside Flax


def _scan_loss_and_grads(cell, P, xs, lengths, initial_state=None):
  def run(P):
    out = seqjax.scan(cell, P, xs, lengths=lengths, initial_state=initial_state)
    return loss(*out), out
  return jax.jit(jax.value_and_grad(run, has_aux=True))(P)


@pytest.mark.parametrize("name", ["lstm", "lstm+rwa"])
def test_linen_rnn_is_scan_in_flax(name):
  cell, xs, lengths = MAKERS[name](), inputs(), jnp.array([T, 0, 4])
  module = LinenRNN(cell, return_carry=True)
  variables = module.init(jax.random.key(0), xs)
  assert list(variables) == ["params"] and list(variables["params"]) == ["cell"]
  assert jax.tree.structure(variables["params"]["cell"]) == jax.tree.structure(cell.init(
      jax.random.key(0), F))
  P = perturbed(cell)

  def run(P):
    out = module.apply({"params": {"cell": P}}, xs, seq_lengths=lengths)
    return loss(*out), out

  got = jax.jit(jax.value_and_grad(run, has_aux=True))(P)
  want = _scan_loss_and_grads(cell, P, xs, lengths)
  assert_trees_close(got, want, **TOL)   # outputs (padded steps 0), final carries and gradients
  assert_trees_close(module.apply({"params": {"cell": P}}, xs, seq_lengths=lengths, return_carry=False),
                     want[0][1][1],
                     **TOL)
  # nn.RNN(LinenCell(cell)) keeps the same dict one level deeper: weights move between them.
  rnn_vars = nn.RNN(LinenCell(cell)).init(jax.random.key(0), xs)
  assert_trees_close(LinenRNN(cell).apply({"params": rnn_vars["params"]["cell"]}, xs),
                     nn.RNN(LinenCell(cell)).apply(rnn_vars, xs), **TOL)
  # A carry from LinenCell.initialize_carry (the RWA's h_0 deferred to these params) streams.
  carry = LinenCell(cell).initialize_carry(jax.random.key(0), (B, F))
  final, hs_a = module.apply({"params": {"cell": P}}, xs[:, :2], initial_carry=carry)
  final, hs_b = module.apply({"params": {"cell": P}}, xs[:, 2:], initial_carry=final)
  assert_trees_close((final, jnp.concatenate([hs_a, hs_b], axis=1)), seqjax.scan(cell, P, xs),
                     **TOL)


@pytest.mark.parametrize("name", ["gru", "lstm+rwa"])
def test_nnx_rnn_is_scan_in_nnx(name):
  cell, xs, lengths = MAKERS[name](), inputs(), jnp.array([2, T, 0])
  module = NnxRNN(cell, F, rngs=nnx.Rngs(3))
  assert_trees_close(module.get_params(), cell.init(nnx.Rngs(3).params(), F), rtol=0, atol=0)
  module.set_params(P := perturbed(cell))
  carry = NnxCell(cell, F).initialize_carry((B, F))

  @nnx.jit
  def run(module):
    def f(module):
      out = module(xs, seq_lengths=lengths, initial_carry=carry, return_carry=True)
      return loss(*out), out
    return nnx.value_and_grad(f, has_aux=True)(module)

  (value, out), grads = run(module)
  (want_value, want_out), want_grads = _scan_loss_and_grads(cell, P, xs, lengths)
  assert_trees_close((value, out), (want_value, want_out), **TOL)
  got = by_path(grads["params"])
  for path, leaf in by_path(want_grads).items():
    np.testing.assert_allclose(got[path], leaf, **TOL, err_msg=str(path))
  assert_trees_close(module(xs), seqjax.scan(cell, P, xs)[1], **TOL)  # default: hs only

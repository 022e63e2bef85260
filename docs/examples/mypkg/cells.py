"""A layer-normalised LSTM for the seqjax launcher: --model=mypkg.cells:ln_lstm.

Gates LN(x W_x) + LN(h W_h) + b, each gate's H units normalised on their own; declared as
cells.LoopParts, so seqjax.scan runs it with the hand-written backward pass."""
import jax
import jax.numpy as jnp

from seqjax import cells


def ln_lstm(hidden_size):
  H = hidden_size

  def norm(z):  # [..., 4H]: layer norm over each gate's H units
    z = z.reshape(*z.shape[:-1], 4, H)
    return jax.nn.standardize(z, axis=-1, epsilon=1e-5).reshape(*z.shape[:-2], 4 * H)

  def project_x(params, x):  # the only parts that touch params (project_h: affine in h)
    xw = x @ params["W_x"]
    return xw, jnp.broadcast_to(params["b"], xw.shape)

  def update(state, px, hw):
    xw, b = px
    i, f, g, o = jnp.split(norm(xw) + norm(hw) + b, 4, axis=-1)
    c = jax.nn.sigmoid(f) * state.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return cells.LSTMState(h=h, c=c), h

  step, fast_loop = cells.fused_step(
      cells.LoopParts(project_x, lambda params, h: h @ params["W_h"], update))
  lstm = cells.lstm(H)  # its init and state: W_x [F,4H], W_h [H,4H], b [4H]; LSTMState(h, c)
  return cells.Cell(lstm.init, lstm.initial_state, step, "ln_lstm", H, fast_loop)

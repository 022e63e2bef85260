"""A layer-normalised LSTM for the seqjax launcher: --model=mypkg.cells:ln_lstm.

Gates LN(x W_x)·g_x + LN(h W_h)·g_h + b, each gate's H units normalised on their own, with
learned gains g_x, g_h; declared as cells.LoopParts whose update reads the gains, so
seqjax.scan runs it with the hand-written backward pass."""
import jax
import jax.numpy as jnp

from seqjax import cells


def ln_lstm(hidden_size):
  H = hidden_size
  lstm = cells.lstm(H)  # its init and state: W_x [F,4H], W_h [H,4H], b [4H]; LSTMState(h, c)

  def init(key, input_size):
    gains = {"g_x": jnp.ones(4 * H), "g_h": jnp.ones(4 * H)}
    return lstm.init(key, input_size) | gains

  def norm(z):  # [..., 4H]: layer norm over each gate's H units
    z = z.reshape(*z.shape[:-1], 4, H)
    return jax.nn.standardize(z, axis=-1, epsilon=1e-5).reshape(*z.shape[:-2], 4 * H)

  def update(params, state, xw, hw):  # project_x, project_h: the two matmuls
    z = norm(xw) * params["g_x"] + norm(hw) * params["g_h"] + params["b"]
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * state.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return cells.LSTMState(h=h, c=c), h

  step, fast_loop = cells.fused_step(cells.LoopParts(
      lambda params, x: x @ params["W_x"], lambda params, h: h @ params["W_h"], update,
      update_takes_params=True))
  return cells.Cell(init, lstm.initial_state, step, "ln_lstm", H, fast_loop)

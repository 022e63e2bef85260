"""A layer-normalised LSTM for the seqjax launcher: --model=mypkg.cells:ln_lstm."""
import jax
import jax.numpy as jnp

from seqjax import cells


def ln_lstm(hidden_size):
  H = hidden_size

  def norm(z):  # layer norm over each gate's H units
    z = z.reshape(*z.shape[:-1], 4, H)
    z = (z - z.mean(-1, keepdims=True)) / jnp.sqrt(z.var(-1, keepdims=True) + 1e-5)
    return z.reshape(*z.shape[:-2], 4 * H)

  def init(key, input_size):
    kx, kh = jax.random.split(key)
    return {"W_x": jax.nn.initializers.glorot_uniform()(kx, (input_size, 4 * H)),
            "W_h": jax.nn.initializers.orthogonal()(kh, (H, 4 * H)),
            "b": jnp.zeros(4 * H).at[H:2 * H].set(1.0)}  # forget gate bias 1

  def initial_state(params, batch_shape=()):
    return cells.LSTMState(h=jnp.zeros((*batch_shape, H)), c=jnp.zeros((*batch_shape, H)))

  def step(params, state, x):
    z = norm(x @ params["W_x"]) + norm(state.h @ params["W_h"])
    i, f, g, o = jnp.split(z + jnp.broadcast_to(params["b"], z.shape), 4, axis=-1)
    c = jax.nn.sigmoid(f) * state.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return cells.LSTMState(h=h, c=c), h

  return cells.Cell(init, initial_state, step, "ln_lstm", H)

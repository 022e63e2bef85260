"""seqjax without JAX's private modules: if the `jax._src` modules it reads were gone (moved in
some JAX version), seqjax still imports, trains, and forward mode gives JAX's own error instead
of seqjax's nicer one. An import hook hides every `jax._src` module from seqjax's own imports
(JAX and optax themselves need theirs)."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import builtins
    import jax

    # JAX itself keeps working; to seqjax's code, every jax._src module is missing.
    real_import = builtins.__import__

    def without_private_jax(name, globals=None, locals=None, fromlist=(), level=0):
      importer = (globals or {}).get("__name__", "")
      if importer.split(".")[0] == "seqjax" and (name + ".").startswith("jax._src."):
        raise ImportError(f"No module named {name!r} (hidden by the test)")
      return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = without_private_jax
    import jax.numpy as jnp
    import optax
    import seqjax
    from seqjax import _fused, cells
    assert _fused._TRACE_STACK is None

    cell = cells.lstm(8)
    params = cell.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (4, 6, 2))
    ys = jnp.sin(jnp.cumsum(xs[..., :1], axis=1))

    def loss(p):
      return jnp.mean((seqjax.scan(cell, p, xs)[1][..., :1] - ys) ** 2)

    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    before, grads = jax.jit(jax.value_and_grad(loss))(params)
    plain = jax.grad(lambda p: jnp.mean(
        (seqjax.scan(cells.autodiff_backward(cell), p, xs)[1][..., :1] - ys) ** 2))(params)
    for k in grads:
      assert jnp.allclose(grads[k], plain[k], rtol=1e-5, atol=1e-6), k
    updates, opt_state = tx.update(grads, opt_state)
    after = loss(optax.apply_updates(params, updates))
    assert after < before, (before, after)
    try:
      jax.jvp(loss, (params,), (params,))
    except TypeError as e:
      assert "autodiff_backward" not in str(e) and "custom_vjp" in str(e), e
    else:
      raise SystemExit("forward mode ran through the hand-written pass")
    print("trained", float(before), float(after))
""")


@pytest.mark.slow
def test_seqjax_imports_and_trains_without_jax_private_modules():
  out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.startswith("trained"), out.stdout

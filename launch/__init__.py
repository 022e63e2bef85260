"""The command-line programs (flags live only here)."""

import logging


class _NoMissingLibtpu(logging.Filter):
  """Drops the one line JAX logs on every machine without a TPU when it looks for one ("Unable to
  initialize backend 'tpu': ... Failed to open libtpu.so"); anything else it logs still shows."""

  def filter(self, record):
    message = record.getMessage()
    return not ("Unable to initialize backend 'tpu'" in message and "libtpu.so" in message)


logging.getLogger("jax._src.xla_bridge").addFilter(_NoMissingLibtpu())

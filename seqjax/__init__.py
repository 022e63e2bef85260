"""seqjax: recurrent cells (RNN, LSTM, GRU, RWA) as pure JAX functions, and running them over time."""

from seqjax import cells
from seqjax.cells import Cell
from seqjax.scanning import default_unroll, scan

__all__ = ["cells", "Cell", "scan", "default_unroll"]
__version__ = "0.1.0"

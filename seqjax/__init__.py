"""seqjax: recurrent cells (RNN, LSTM, GRU, RWA) as pure JAX functions, and running them over time."""

from seqjax import cells
from seqjax.cells import Cell
from seqjax.bidirectional_layer import Bidirectional, bidirectional
from seqjax.scanning import default_unroll, scan

__all__ = ["cells", "Cell", "scan", "default_unroll", "bidirectional", "Bidirectional"]
__version__ = "0.2.0"

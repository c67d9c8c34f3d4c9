"""Built-in merge methods; importing this package registers them (one module per method)."""
from . import averaging, task_arithmetic, ties, dare, tall, consensus, pcb, calm, adamerging  # noqa: F401
from . import emr, pcb_es  # noqa: F401
from . import tsvm, iso, cart, wudi  # noqa: F401  (the SVD family: per-matrix methods, see merging/layers.py)

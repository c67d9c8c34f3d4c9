"""Built-in modifiers of a merged vector (post-processing applicable to any method); importing this package
registers them.  They live apart from ``merging.methods`` because they are not merges: they take a method's
:class:`~merging.registry.MergeResult` and return a new delta (see :func:`merging.registry.run_merge`)."""
from . import lines  # noqa: F401

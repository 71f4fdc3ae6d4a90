"""kd-audit: what distillation did to a model's confidence.

The Python API under the ``python -m audit`` command line::

    from audit import compare
    report = compare("teacher/", ["student/"], "vader-movies:test")

The package face is lazy: ``import audit`` imports neither torch nor pyarrow nor rich (the pytest plugin imports
it in every pytest session of an environment where kd-audit is installed); the API loads on first use.
"""

import sys
import types

from audit.errors import AuditError

__version__ = "0.1.0"
__all__ = ["AuditError", "CompareSettings", "compare", "compare_callable", "compare_predictions", "__version__"]


class _LazyFace(types.ModuleType):
    """``audit.compare`` is the function, although ``audit/compare.py`` is also a submodule of that name: the
    import system binds a loaded submodule onto its package, and this property's setter leaves the function."""

    @property
    def compare(self):
        from audit.compare import compare

        return compare

    @compare.setter
    def compare(self, submodule) -> None:
        pass

    @property
    def CompareSettings(self):  # noqa: N802 (a class)
        from audit.compare import CompareSettings

        return CompareSettings

    @property
    def compare_callable(self):
        from audit.compare import compare_callable

        return compare_callable

    @property
    def compare_predictions(self):
        from audit.compare import compare_predictions

        return compare_predictions


sys.modules[__name__].__class__ = _LazyFace

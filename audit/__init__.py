"""kd-audit: what distillation did to a model's confidence.

The Python API under the ``python -m audit`` command line::

    from audit import compare
    report = compare("teacher/", ["student/"], "vader-movies:test")
"""

__version__ = "0.1.0"

from audit.compare import CompareSettings, compare, compare_predictions  # noqa: E402
from audit.errors import AuditError  # noqa: E402

__all__ = ["AuditError", "CompareSettings", "compare", "compare_predictions", "__version__"]

"""Distillation methods. Importing this package registers every built-in method."""

from letkd.methods import at, dkd, fitnet, kd, letkd, quest, sp, vanilla  # noqa: F401  (registers them)
from letkd.methods.base import (
    Distiller,
    MethodContext,
    MethodParams,
    get_method,
    list_methods,
    register_method,
)

__all__ = ["Distiller", "MethodContext", "MethodParams", "get_method", "list_methods", "register_method"]

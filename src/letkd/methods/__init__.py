"""Distillation methods. Importing this package registers every built-in method."""

from letkd.methods.base import Distiller, get_method, list_methods, register_method

__all__ = ["Distiller", "get_method", "list_methods", "register_method"]

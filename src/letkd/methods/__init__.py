"""Distillation methods. Importing this package registers every built-in method."""

from letkd.methods import (  # noqa: F401  (registers them)
    ab,
    at,
    compose,
    crd,
    crd_kd,
    dist,
    dkd,
    fitnet,
    fsp,
    kd,
    letkd,
    nst,
    ofd,
    pkt,
    quest,
    reviewkd,
    rkd,
    simkd,
    sp,
    vanilla,
    vid,
)
from letkd.methods.base import (
    Distiller,
    MethodContext,
    MethodParams,
    get_method,
    list_methods,
    register_method,
)

__all__ = ["Distiller", "MethodContext", "MethodParams", "get_method", "list_methods", "register_method"]

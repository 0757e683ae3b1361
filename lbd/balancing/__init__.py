"""Load balancing: the algorithm interface and the registry of algorithms by name.

Each algorithm lives in its own module and is looked up by name through :func:`get` or
built with :func:`build`; third-party algorithms register under the ``lbd.balancers``
entry point group.
"""

from lbd.balancing.base import Backend, Balancer, BalancerOptions, NoOptions, RequestView, needs_body
from lbd.balancing.registry import (
    ENTRY_POINT_GROUP,
    BalancerPluginError,
    UnknownBalancer,
    build,
    get,
    names,
)

__all__ = [
    "Backend",
    "RequestView",
    "Balancer",
    "BalancerOptions",
    "NoOptions",
    "needs_body",
    "ENTRY_POINT_GROUP",
    "UnknownBalancer",
    "BalancerPluginError",
    "names",
    "get",
    "build",
]

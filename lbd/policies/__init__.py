"""Routing policies across pools: fallback chains, model cascades and shadow traffic.

The data plane's side is the :class:`~lbd.proxy.policies.Policies` layer of the exchange;
this package holds what it calls: reading answers (:mod:`.answers`, :mod:`.paths`), the
accept and compare rules (:mod:`.rules`), rewriting a request for another model
(:mod:`.rewrite`), the cascade's stages (:mod:`.cascade`) and shadow copies
(:mod:`.shadow`). Modules import nothing of the proxy at import time, so the config can use
:mod:`.paths`.
"""

"""Asynchronous jobs: submit a request, get a job id at once (202), poll it or get a signed
callback. Queued in memory (the default, not durable) or in Redis Streams (durable, shared by
every lbd instance); run at least once through the same pipeline as a client's request.

See :mod:`lbd.jobs.base` for the job's life and the store's interface."""

from lbd.jobs.base import JobStore, StoreError
from lbd.jobs.service import Jobs, build_store, new_id

__all__ = ["Jobs", "JobStore", "StoreError", "build_store", "new_id"]

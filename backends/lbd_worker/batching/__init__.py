"""Request queue (priorities, buckets, deadlines) and the dynamic batcher (Triton's rules)."""

from lbd_worker.batching.batcher import DynamicBatcher, Result, Waiter
from lbd_worker.batching.policy import BatchRules, Dispatch, Wait, plan
from lbd_worker.batching.queue import HIGH, NORMAL, Entry, PendingQueue, priority_level

__all__ = ["DynamicBatcher", "Result", "Waiter", "BatchRules", "Dispatch", "Wait", "plan",
           "HIGH", "NORMAL", "Entry", "PendingQueue", "priority_level"]

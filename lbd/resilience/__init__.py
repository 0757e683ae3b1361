"""Resilience: circuit breaker, outlier detection, retry policy and budget.

Pure state machines: time comes from an injected :class:`~lbd.clock.Clock` and randomness
from an injected :class:`random.Random`, so their tests are exact.
"""

from lbd.resilience.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from lbd.resilience.outlier import Outcome, OutlierDetector, in_panic, outcome_of_status, routable
from lbd.resilience.retry import (
    CONNECT_FAILURE, RESET, TIMEOUT, RetryBudget, RetryPolicy, Verdict, parse_retry_after,
)

__all__ = [
    "CircuitBreaker", "CLOSED", "OPEN", "HALF_OPEN",
    "OutlierDetector", "Outcome", "outcome_of_status", "in_panic", "routable",
    "RetryPolicy", "RetryBudget", "Verdict", "parse_retry_after", "CONNECT_FAILURE", "RESET", "TIMEOUT",
]

"""List prices of what dm pays per operation on Google Cloud, for the cost benchmark.

Looked up on 2026-11-29 from Google's public pricing pages (USD, beyond the
free tiers; prices vary by location and change: check before you rely on
them). Firestore Standard edition in a multi-region location (nam5, eur3);
a regional location (e.g. us-central1) costs half.

| what | price | unit |
|---|---|---|
| Firestore document read | $0.06 | per 100,000 documents |
| Firestore document write | $0.18 | per 100,000 documents |
| Firestore document delete | $0.02 | per 100,000 documents |
| Cloud Tasks billable operation (API call or push delivery attempt) | $0.40 | per million |
| Cloud Run functions request (2nd gen: Cloud Run pricing) | $0.40 | per million |

Sources: cloud.google.com/firestore/pricing, cloud.google.com/tasks/pricing,
cloud.google.com/run/pricing. Compute time (vCPU- and GiB-seconds) is not
counted here: it depends on the jobs, not on dm.
"""

from __future__ import annotations

import dataclasses

PRICES_DATE = "2026-11-29"
PRICES_WHERE = "Firestore multi-region (nam5/eur3), Cloud Tasks, Cloud Run functions; USD"


@dataclasses.dataclass(frozen=True)
class Prices:
    """USD per single operation."""

    firestore_read: float = 0.06 / 100_000
    firestore_write: float = 0.18 / 100_000
    firestore_delete: float = 0.02 / 100_000
    tasks_operation: float = 0.40 / 1_000_000
    function_request: float = 0.40 / 1_000_000

    def per_million(
        self,
        *,
        reads: float,
        writes: float,
        deletes: float,
        tasks: float,
        requests: float,
    ) -> float:
        """USD per million executions from the operations one execution costs.

        A queued task costs two Cloud Tasks operations (its creation and its
        delivery) and one function request (its delivery).
        """
        one = (
            reads * self.firestore_read
            + writes * self.firestore_write
            + deletes * self.firestore_delete
            + tasks * 2 * self.tasks_operation
            + requests * self.function_request
        )
        return one * 1_000_000


LIST = Prices()

"""dm beside its peers (Prefect 3, Celery 5 with Redis): ``make bench`` (:mod:`.harness`).

Each system runs in its own environment (dm's, ``.bench/prefect``,
``.bench/celery``) through a small runner module; only the standard library
is imported at this package's top, so every environment can import it.
"""

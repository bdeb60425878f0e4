"""The worker as a service: the Celery app and its batch task, claims and writes per batch,
the sweeper, tenant queues, metrics, time limits, and ``htrq transcribe``'s in-process queue.

It changes with operations; what it runs on each page is :mod:`worker.recognition`, which
knows nothing of Celery, the database or storage.
"""

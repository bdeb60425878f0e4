"""Telling clients a job has finished: its completion noticed once, in the transaction that
finishes it (``completion.py``), and the signed webhook events sent from the outbox
(``webhooks.py``)."""

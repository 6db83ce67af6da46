"""The durable outbound queue: on-disk entries, the single-owner runner, routing, DSNs, DKIM.

Other parts call :func:`mailsrv.queue.enqueue.Enqueuer` (SMTP workers) and
:func:`mailsrv.queue.runner.main` (the queue owner process).
"""

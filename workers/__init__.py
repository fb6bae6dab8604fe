"""Tailor's Celery side: the app, queues and routing, task modules and worker entry points.

`workers.app` is Django-free and shared by every worker; `workers.control` holds the Django-aware tasks
that run beside the database. GPU workers (later) import only `workers.app` and `gpu_runner`.
"""

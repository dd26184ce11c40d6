"""The project shell: settings, routes, the ASGI and WSGI entry points, the Celery app and its
schedule, and ``make run``'s launcher."""

from config.celery import app as celery_app

__all__ = ["celery_app"]

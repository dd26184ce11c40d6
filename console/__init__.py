"""Agent Console: the Django project and the tenant, operator and gateway domain."""

from console.celery import app as celery_app

__all__ = ["celery_app"]

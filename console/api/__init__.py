"""The REST API for integrations, under ``/api/v1/``: API keys, quotas and budgets, usage."""

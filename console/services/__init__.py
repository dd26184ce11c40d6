"""The console's services: users and API keys, the usage ledger, budgets and rate limits, and
operator actions recorded in the audit log."""

from console.services.accounts import (
    api_key_authenticate,
    api_key_create,
    api_key_revoke,
    operator_ensure,
    quota_get,
    quota_set_suspended,
    user_check_active,
)
from console.services.audit import (
    api_keys_revoke,
    audit_record,
    audited_delete,
    audited_save,
    budgets_reset,
    model_changes,
    users_set_suspended,
)
from console.services.idempotency import (
    IdempotencyConflict,
    Replay,
    idempotency_begin,
    idempotency_finish,
    idempotent_requests_expire,
    idempotent_requests_forget,
)
from console.services.ledger import (
    TokenUsage,
    cost_of,
    price_cache_clear,
    price_for,
    usage_record,
)
from console.services.limits import (
    Admission,
    RateStatus,
    WorstCase,
    budget_window,
    gateway_admit,
    gateway_settle,
    request_admit,
    reservations_release_expired,
    worst_case,
)

__all__ = [
    "Admission",
    "IdempotencyConflict",
    "RateStatus",
    "Replay",
    "TokenUsage",
    "WorstCase",
    "api_key_authenticate",
    "api_key_create",
    "api_key_revoke",
    "api_keys_revoke",
    "audit_record",
    "audited_delete",
    "audited_save",
    "budget_window",
    "budgets_reset",
    "cost_of",
    "gateway_admit",
    "gateway_settle",
    "idempotency_begin",
    "idempotency_finish",
    "idempotent_requests_expire",
    "idempotent_requests_forget",
    "model_changes",
    "operator_ensure",
    "price_cache_clear",
    "price_for",
    "quota_get",
    "quota_set_suspended",
    "request_admit",
    "reservations_release_expired",
    "usage_record",
    "user_check_active",
    "users_set_suspended",
    "worst_case",
]

"""The tenant and ledger domain: users, quotas, keys, budgets, prices, usage and audit."""

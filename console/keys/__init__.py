"""The key page: everyone's own API keys, made (with scopes and an expiry), listed and revoked."""

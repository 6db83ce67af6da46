"""The admin HTTP API: the directory operations over JSON, bearer-token auth, admin scopes enforced."""

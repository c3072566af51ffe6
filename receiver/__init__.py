"""The top floor: HTTP in. Verifies webhooks, enqueues them, and serves the jobs API."""

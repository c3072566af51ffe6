"""A Recall.ai emulator: a real HTTP server for the API calls and webhooks the pipeline relies on."""

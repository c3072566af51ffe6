"""A Recall.ai emulator: a real HTTP server for the calls and webhooks the pipeline relies on."""

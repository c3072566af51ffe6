"""Recall.ai, as the pipeline sees it: the API client (`client.py`), its typed errors
(`errors.py`), the objects it answers with (`models.py`), pre-signed downloads (`download.py`),
the fleet-wide pacing within Recall's quotas (`limiter.py`), and the workspace and bounds a
client is built from (`workspace.py`; tasks/recalls.py builds them from the settings). Import
from the modules: this package's own import loads nothing (the receiver never needs an HTTP
client)."""

"""The bottom floor: the transcription pipeline (job state, steps, the Recall client, the store)
and what every process shares (settings, key, task and queue names). Imports no Flask; Celery
only in `celery_tasks.py`."""

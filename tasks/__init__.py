"""The middle floor: the transcription pipeline (Recall client, job state, store, Celery tasks)."""

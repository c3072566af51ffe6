"""The worker process: the Celery app it runs (`celery_app.py`), the sweeper bootstep that
re-drives due jobs and unapplied events (`sweeper.py`), and the command that starts it and
restarts it in place when Celery gives up (`main.py`)."""

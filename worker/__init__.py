"""The bottom floor: settings and the Celery application factory."""

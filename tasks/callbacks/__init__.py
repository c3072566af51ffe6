"""Results reach the services that asked: signed webhooks and a Celery task, for every job that
finishes.

A job that finishes (done or failed) is put in the outbox by the same Lua command that finishes it
(tasks/jobs/jobs.lua), so no news is lost between two writes; so is a finished job a caller adds a
`callback_url` to (`add_callback`). The sweeper sends the outbox on (`outbox.py`): one event per
finish (`job.done` or `job.failed`, its `webhook-id` derived from the job and its attempt, its body
stored once), a delivery per destination (`CALLBACK_URLS` and each `callback_url` the job was given,
up to ten, each with the API token that gave it), and, with `CALLBACK_TASK`, one Celery message
whose task id is derived from the event. Deliveries (`deliveries.py`, `callbacks.lua`) are scheduled
in their own due-set, paced per destination and shared out per client, and attempted by a small pool
of threads in each worker process (worker/deliveries.py) under Standard Webhooks signatures
(`send.py`), each attempt to an address checked at that moment, its name resolved on threads shared
out per client (`guard.py`). The delivery records and their ids: `model.py`; jobs as users see them,
joined with the state of their callbacks: `views.py`.
"""

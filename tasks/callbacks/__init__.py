"""Results reach the services that asked: signed webhooks and a Celery task, for every job that
finishes.

A job that finishes (done or failed) is put in the outbox by the same Lua command that finishes
it (tasks/lua/jobs.lua), so no news is lost between two writes. The sweeper sends the outbox on
(`outbox.py`): one event per finish (`job.done` or `job.failed`, its `webhook-id` derived from the
job and its attempt), a delivery per destination (`CALLBACK_URLS` and the job's own
`callback_url`), and, with `CALLBACK_TASK`, one Celery message whose task id is derived from the
event. Deliveries (`deliveries.py`, tasks/lua/callbacks.lua) are scheduled in their own due-set,
paced per destination, and attempted by a small pool of threads in each worker process
(worker/deliveries.py) under Standard Webhooks signatures (`send.py`), each attempt to an address
checked at that moment (`guard.py`). The delivery records and the view a job shows of them:
`model.py`.
"""

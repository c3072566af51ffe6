"""The job, in one room: its state machine (`states.py`), its record (`record.py`) and the view
users see (`views.py`), the store that reads and moves it (`store.py`, composed of `transitions.py`,
`sending.py`, `queries.py` and `maintenance.py` over `base.py` and the jobs script: `jobs.lua`
joined with its parts of the same names, `transitions.lua`, `sending.lua`, `maintenance.lua`; a
listing's walk in `pages.lua`), and the leases its running steps hold (`leases.py`). Import from
those modules: this face imports nothing, because the modules every process shares (names,
outcomes, metrics) read `states.py`."""

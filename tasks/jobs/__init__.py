"""The job: its state machine (`states.py`), its record and views, the store that moves it
(`store.py`, over `jobs.lua`) and the leases its running steps hold (`leases.py`)."""

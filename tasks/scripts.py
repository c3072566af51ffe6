"""Lua scripts, loaded one way: each `.lua` file lives beside the module that runs it, is read once
per process, and is registered on each client that runs it (as dramatiq loads its broker's
scripts). A script's header says its KEYS and ARGV."""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script


def register(client: redis.Redis, module: str, name: str) -> Script:
    """The script `name` from the package of `module` (the caller's `__name__`), ready to run
    on `client`."""
    return client.register_script(_read(module.rpartition(".")[0], name))


@cache
def _read(package: str, name: str) -> str:
    return resources.files(package).joinpath(name).read_text()

"""Lua scripts, loaded one way: each `.lua` file lives beside the module that runs it, is read once
per process, and is registered on each client that runs it (as dramatiq loads its broker's
scripts). A script's header says its KEYS and ARGV."""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script


def register(client: redis.Redis, module: str, *names: str) -> Script:
    """The script from the package of `module` (the caller's `__name__`), ready to run on
    `client`: the file `names`, or several joined in that order (one script too long to read at
    once, split by concern: each part stays small, and the whole still runs atomically). A name
    `package:file` is another package's file (helpers two scripts share)."""
    package = module.rpartition(".")[0]
    return client.register_script(
        "\n".join(
            _read(*name.split(":")) if ":" in name else _read(package, name) for name in names
        )
    )


@cache
def _read(package: str, name: str) -> str:
    return resources.files(package).joinpath(name).read_text()

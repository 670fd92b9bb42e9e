"""The `sharedcloud` command of sharedcloud-cli 0.0.5, pointed at the Nimbus server under test.

Two things the installed package cannot do by itself, done here instead of patching it:
- its pinned tabulate 0.8.2 imports `collections.Iterable`, which Python 3.10 removed: alias the ABCs back;
- it reads its server from SHAREDCLOUD_CLI_URL at import time: default it to NIMBUS_URL.
"""
import collections
import collections.abc
import os
import sys

for _name in ("Iterable", "Mapping", "MutableMapping", "Sequence", "Callable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

os.environ.setdefault("SHAREDCLOUD_CLI_URL", os.environ["NIMBUS_URL"])

from sharedcloud_cli.main import cli  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "sharedcloud"
    sys.exit(cli())

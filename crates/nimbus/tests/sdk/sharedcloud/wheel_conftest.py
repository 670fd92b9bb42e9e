"""A pytest plugin (`-p wheel_conftest`) that runs the tests shipped inside the sharedcloud-cli 0.0.5 wheel
(`tests/` in the venv's site-packages) against the Nimbus server under test, without changing them:

- the CLI's pinned tabulate 0.8.2 needs `collections.Iterable` and friends back (Python >= 3.10);
- the CLI reads its server from SHAREDCLOUD_CLI_URL when first imported: NIMBUS_URL;
- the wheel's harness is out of step with CLI 0.0.5: it passes `--password` to `account create` and
  `login`, which now prompt for it, and does not answer the "Are you sure?" of `account delete`: those
  three helpers are replaced here by ones that answer the prompts on stdin, as a user would;
- every test starts logged out, with no active instance, as on a fresh machine (a failed test would
  otherwise leave its token behind for the "logged out" tests after it).

It also writes one JSON line per test outcome to $SC_WHEEL_REPORT, for the Rust test to check.
"""
import collections
import collections.abc
import json
import os

for _name in ("Iterable", "Mapping", "MutableMapping", "Sequence", "Callable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

os.environ.setdefault("SHAREDCLOUD_CLI_URL", os.environ["NIMBUS_URL"])

import pytest  # noqa: E402

from sharedcloud_cli.constants import DATA_FOLDER  # noqa: E402
from sharedcloud_cli.main import account, cli  # noqa: E402
from tests.test_utils import Config, TestUtils, _read_user_token  # noqa: E402


def _create_account(cls, email=None, username=None, password=None):
    args = ["create"]
    if email:
        args += ["--email", email]
    if username:
        args += ["--username", username]
    return cls.runner.invoke(account, args, obj=Config(token=_read_user_token()), input=(password or "") + "\n")


def _login(cls, username=None, password=None):
    args = ["login"]
    if username:
        args += ["--username", username]
    return cls.runner.invoke(cli, args, input=(password or "") + "\n")


def _delete_account(cls, uuid=None):
    return cls.runner.invoke(account, ["delete"], obj=Config(token=_read_user_token()), input="y\n")


TestUtils.create_account = classmethod(_create_account)
TestUtils.login = classmethod(_login)
TestUtils.delete_account = classmethod(_delete_account)


@pytest.fixture(autouse=True)
def fresh_machine():
    os.makedirs(DATA_FOLDER, exist_ok=True)
    for name in ("client_config", "instance_config"):
        path = os.path.join(DATA_FOLDER, name)
        if os.path.exists(path):
            os.remove(path)
    yield


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        with open(os.environ["SC_WHEEL_REPORT"], "a") as f:
            f.write(json.dumps({"test": report.nodeid, "when": report.when, "outcome": report.outcome}) + "\n")

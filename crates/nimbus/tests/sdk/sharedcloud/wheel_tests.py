"""Runs the wheel's own test files named in $SC_WHEEL_FILES (space-separated, e.g. `test_create_instance.py`)
with pytest and the plugin `wheel_conftest`, leaving out the tests named in $SC_WHEEL_DESELECT (one
`file::test` per line). Exits with pytest's status."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import tests  # noqa: E402  (the wheel's own test package, in site-packages)

WHEEL_TESTS = os.path.dirname(os.path.abspath(tests.__file__))

args = [os.path.join(WHEEL_TESTS, f) for f in os.environ["SC_WHEEL_FILES"].split()]
for line in os.environ.get("SC_WHEEL_DESELECT", "").splitlines():
    if line.strip():
        # Node ids are relative to the rootdir, the wheel's site-packages.
        args += ["--deselect", "tests/" + line.strip()]
args += [
    "-p", "wheel_conftest",
    "-p", "no:cacheprovider",
    "--rootdir", os.path.dirname(WHEEL_TESTS),
    "-o", "python_files=test_*.py",
    "-q", "-rfE", "--tb=short",
]
sys.exit(pytest.main(args))

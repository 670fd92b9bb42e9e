"""Runs the real `sharedcloud` command (launcher.py) as a user would, in its own process, answering its
prompts on stdin, and checks what it prints and how it exits."""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.expanduser("~"), ".sharedcloud")
TOKEN_FILE = os.path.join(DATA, "client_config")
INSTANCE_FILE = os.path.join(DATA, "instance_config")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def sharedcloud(*args, stdin="", expect=0):
    """Runs `sharedcloud ARGS...`; returns its output (stdout and stderr) after checking its exit code."""
    p = subprocess.run(
        [sys.executable, os.path.join(HERE, "launcher.py"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = p.stdout + p.stderr
    assert p.returncode == expect, "sharedcloud {} exited {} (expected {}):\n{}".format(
        " ".join(args), p.returncode, expect, out
    )
    return out


def uuid_in(output):
    m = UUID.search(output)
    assert m, "no uuid in:\n" + output
    return m.group(0)


def table_rows(output):
    """The rows of a tabulate table (after its header and rule), split on runs of spaces."""
    lines = [l for l in output.splitlines() if l.strip()]
    return [re.split(r"\s{2,}", l.strip()) for l in lines[2:]]

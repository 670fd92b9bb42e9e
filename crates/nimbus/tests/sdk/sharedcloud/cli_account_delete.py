"""The end of the story: the logged-in user deletes the account (confirming on stdin) and is logged out."""
import os

from common import TOKEN_FILE, sharedcloud, table_rows

out = sharedcloud("account", "list")
assert table_rows(out)[0][2] == os.environ.get("SC_USERNAME", "alice"), out
out = sharedcloud("account", "delete", stdin="y\n")
assert "Account Deleted" in out and "Logout Succeeded" in out, out
assert not os.path.exists(TOKEN_FILE)
out = sharedcloud("instance", "list", expect=1)
assert "You seem to be logged out" in out, out
print("deleted")

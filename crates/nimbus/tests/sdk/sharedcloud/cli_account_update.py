"""The logged-in user changes the account with the CLI: a new password (`account change_password`, asked on
stdin), then a new email and username (`account update`). The CLI logs out after each; the user logs in
again with what changed, and the old credentials no longer work."""
import os

from common import TOKEN_FILE, sharedcloud, table_rows

old = os.environ.get("SC_USERNAME", "alice")
new = os.environ["SC_NEW_USERNAME"]

out = sharedcloud("account", "change_password", stdin="a-new-s3cret-pass\n")
assert "Password Changed" in out and "Logout Succeeded" in out, out
assert not os.path.exists(TOKEN_FILE)
out = sharedcloud("login", "--username", old, stdin=old + "-blablabla\n", expect=1)
assert "Unable to log in with provided credentials" in out, out
sharedcloud("login", "--username", old, stdin="a-new-s3cret-pass\n")

out = sharedcloud("account", "update", "--email", "x", expect=1)
assert "Enter a valid email address." in out, out
out = sharedcloud("account", "update", "--email", new + "@example.org", "--username", new)
assert "Account Updated" in out and "Logout Succeeded" in out, out
out = sharedcloud("login", "--username", old, stdin="a-new-s3cret-pass\n", expect=1)
assert "Unable to log in with provided credentials" in out, out
out = sharedcloud("login", "--username", new, stdin="a-new-s3cret-pass\n")
assert "Login Succeeded" in out, out
row = table_rows(sharedcloud("account", "list"))[0]
assert row[1:3] == [new + "@example.org", new], row
print("updated")

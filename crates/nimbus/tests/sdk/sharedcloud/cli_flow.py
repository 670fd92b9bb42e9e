"""A user's story with the real sharedcloud-cli: sign up, log in, see the GPU models, create a CPU and a
GPU instance, list them, update one, be refused with the API's messages, delete one. Prints one JSON line
with what the Rust test checks next through plain HTTP and the native API."""
import json
import os

from common import INSTANCE_FILE, TOKEN_FILE, sharedcloud, table_rows, uuid_in

username = os.environ.get("SC_USERNAME", "alice")
password = username + "-blablabla"

out = sharedcloud("instance", "list", expect=1)
assert "You seem to be logged out" in out, out

out = sharedcloud("account", "create", "--email", username + "@example.com", "--username", username,
                  stdin=password + "\n")
assert "Account Created" in out, out
account_uuid = uuid_in(out)

out = sharedcloud("login", "--username", username, stdin="wrong-password\n", expect=1)
assert "Unable to log in with provided credentials" in out, out
assert not os.path.exists(TOKEN_FILE)
out = sharedcloud("login", "--username", username, stdin=password + "\n")
assert "Login Succeeded" in out, out
token = open(TOKEN_FILE).read()
assert token and token == token.strip(), repr(token)

out = sharedcloud("gpu", "list")
# UUID, NAME, CODENAME, CUDA_CORES, IS_AVAILABLE
gpus = {row[2]: row[0] for row in table_rows(out)}
assert list(gpus) == ["titanv", "teslak80", "titanxp", "1080_ti", "titanx", "1080", "1070", "1060"], out
assert table_rows(out)[0][1:4] == ["Nvidia Titan V 12GB", "titanv", "5120"], out
assert gpus["titanv"] == "caf0daeb-ba23-4499-b4f9-8b4965714366", out

out = sharedcloud("instance", "create", "--name", "cpu-box", "--type", "cpu", "--ask-price", "1.5",
                  "--max-num-parallel-jobs", "3")
cpu_uuid = uuid_in(out)
assert open(INSTANCE_FILE).read() == cpu_uuid, "the CLI keeps the new instance as its active one"

out = sharedcloud("instance", "create", "--name", "gpu-box", "--type", "gpu", "--ask-price", "0.5",
                  "--gpu-uuid", gpus["titanv"])
gpu_uuid = uuid_in(out)

out = sharedcloud("instance", "list")
rows = table_rows(out)
# UUID, NAME, STATUS, ASK_PRICE, TYPE, GPU, RUNNING_JOBS, MAX_NUM_PARALLEL_JOBS (LAST_CONNECTION is empty)
assert [r[:8] for r in rows] == [
    [gpu_uuid, "gpu-box", "NOT_AVAILABLE", "0.5", "GPU", "Nvidia Titan V 12GB", "0", "1"],
    [cpu_uuid, "cpu-box", "NOT_AVAILABLE", "1.5", "CPU", "n/a", "0", "3"],
], out

out = sharedcloud("instance", "update", "--uuid", cpu_uuid, "--name", "cpu-box-2", "--ask-price", "2.5",
                  "--max-num-parallel-jobs", "5")
assert uuid_in(out) == cpu_uuid, out
out = sharedcloud("instance", "list")
row = [r for r in table_rows(out) if r[0] == cpu_uuid][0]
assert row[1:4] == ["cpu-box-2", "NOT_AVAILABLE", "2.5"] and row[7] == "5", out

# The API's refusals, printed by the CLI as it got them.
out = sharedcloud("instance", "create", "--name", "x", "--type", "gpu", "--ask-price", "1", expect=1)
assert 'needs to be provided if the instance is type GPU"' in out, out
out = sharedcloud("instance", "create", "--name", "x", "--ask-price", "0.0001", expect=1)
assert "cannot be smaller than $0.001" in out, out
out = sharedcloud("instance", "update", "--uuid", cpu_uuid, "--type", "gpu", "--gpu-uuid", gpus["1080"],
                  expect=1)
assert '"current set value (5) is invalid for a GPU instance. Please set it to 1' in out, out
out = sharedcloud("instance", "update", "--uuid", cpu_uuid, "--gpu-uuid", gpus["1080"], expect=1)
assert "is unnecessary because the instance is not, or not gonna be type GPU anymore" in out, out
out = sharedcloud("instance", "update", "--uuid", "00000000-0000-4000-8000-000000000000", "--name", "y",
                  expect=1)
assert "Not found resource with this UUID" in out, out

# A GPU instance becomes a CPU one (and loses its GPU), as `instance update --type cpu` asks.
out = sharedcloud("instance", "update", "--uuid", gpu_uuid, "--type", "cpu", "--max-num-parallel-jobs", "2")
assert uuid_in(out) == gpu_uuid, out
row = [r for r in table_rows(sharedcloud("instance", "list")) if r[0] == gpu_uuid][0]
assert row[4:8] == ["CPU", "n/a", "0", "2"], row

out = sharedcloud("instance", "delete", "--uuid", gpu_uuid)
assert not os.path.exists(INSTANCE_FILE), "the CLI forgets its active instance after a delete"
out = sharedcloud("instance", "delete", "--uuid", gpu_uuid, expect=1)
assert "Not found resource with this UUID" in out, out
rows = table_rows(sharedcloud("instance", "list"))
assert [r[0] for r in rows] == [cpu_uuid], rows

print(json.dumps({"token": token, "account": account_uuid, "cpu": cpu_uuid, "deleted": gpu_uuid,
                  "gpu_1080": gpus["1080"]}))

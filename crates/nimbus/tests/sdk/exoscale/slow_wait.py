"""The SDK's own waiter on an operation that outlasts the server's one-second hold: it must see `pending`,
sleep, poll again and return the finished operation (the server runs with `--sim-delay create=2500`)."""

import os

import schema_check

BASE = os.environ["NIMBUS_URL"] + "/v2"
recorder = schema_check.install(BASE)

from exoscale.api.v2 import Client  # noqa: E402

c = Client(os.environ["NIMBUS_KEY"], os.environ["NIMBUS_SECRET"], url=BASE)
small = next(t for t in c.list_instance_types()["instance-types"] if t["family"] == "standard" and t["size"] == "small")
busybox = next(t for t in c.list_templates()["templates"] if t["name"] == "busybox")
op = c.create_instance(name="slow", disk_size=10, instance_type={"id": small["id"]}, template={"id": busybox["id"]})
assert op["state"] == "pending", op
assert c.get_operation(id=op["id"])["state"] == "pending"
assert c.get_instance(id=op["reference"]["id"])["state"] == "starting"
done = c.wait(op["id"], max_wait_time=60)
assert done["state"] == "success" and done["reference"]["id"] == op["reference"]["id"], done
assert c.get_instance(id=done["reference"]["id"])["state"] == "running"
assert recorder.validated["get-operation"] >= 3, recorder.validated
print("OK: waited through pending with the SDK's waiter")

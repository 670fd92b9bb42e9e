"""A Gcore user's story with the real `gcore` SDK against Nimbus: flavors and images, create and poll,
list with filters and paging, every PATCH tag case of the seed (read-only tags surviving each), every
instance action with the status it leaves, resize, security groups (made through the SDK too),
interfaces, metrics, console, tasks, delete and poll, and the 404/401/409 errors in Gcore's shape. Strict
response validation is on, and raw responses are checked to carry exactly the keys of the SDK's models."""

import json
import os
import sys

import httpx
from gcore import AuthenticationError, BadRequestError, ConflictError, NotFoundError
from gcore.types.cloud import Instance, Task
from gcore.types.cloud.instance_interface import InstanceInterface
from gcore.types.cloud.instances.image import Image
from gcore.types.cloud.instances.instance_flavor_detailed import InstanceFlavorExtendedSerializerWithPrice
from gcore.types.cloud.instances.metrics import Metrics

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from wsprobe import open_console  # noqa: E402

from common import PROJECT, REGION, SECRET, URL, client, error_body, exact, native, required, tag_map

gc = client()
inst = gc.cloud.instances

# --- Catalog: the flavor and image a user picks.
flavors = gc.cloud.instances.flavors.list(include_prices=True)
raw_flavors = gc.cloud.instances.flavors.with_raw_response.list(include_prices=True).http_response.json()
assert raw_flavors["count"] == len(raw_flavors["results"]) == len(flavors.results) > 0
for f in raw_flavors["results"]:
    exact(InstanceFlavorExtendedSerializerWithPrice, f, "flavor")
small = next(f for f in flavors.results if f.flavor_id == "standard.small")
assert (small.vcpus, small.ram, small.disabled) == (2, 2048, False), small
assert small.hardware_description == {"vcpus": "2 vCPUs", "ram": "2 GiB"}, small.hardware_description

images = gc.cloud.instances.images.list()
assert images.count >= 1
image = next(i for i in images.results if i.name == "busybox")
raw_image = gc.cloud.instances.images.with_raw_response.get(image.id).http_response.json()
required(Image, raw_image, "image")
assert (raw_image["project_id"], raw_image["region_id"]) == (PROJECT, REGION)
assert gc.cloud.instances.images.list(name="busy").count == 1
assert gc.cloud.instances.images.list(name="no-such-image").count == 0


def volumes(size=10):
    return [{"source": "image", "image_id": image.id, "size": size, "boot_index": 0}]


EXTERNAL = [{"type": "external"}]

# --- Create and poll.
web = inst.create_and_poll(
    name="gc-web-1", flavor="standard.small", interfaces=EXTERNAL, volumes=volumes(), tags={"env": "prod", "team": "a"}
)
assert (web.status, web.vm_state, web.task_state, web.task_id) == ("ACTIVE", "active", None, None), web
assert web.name == "gc-web-1" and web.flavor.flavor_id == "standard.small" and web.flavor.ram == 2048
assert (web.project_id, web.region_id) == (PROJECT, REGION)
assert tag_map(web, False) == {"env": "prod", "team": "a"}, web.tags
READ_ONLY = tag_map(web, True)
assert READ_ONLY.get("nimbus.zone"), f"a read-only system tag on every instance: {web.tags}"
assert len(web.volumes) == 1 and web.volumes[0].delete_on_termination
[(network, addrs)] = web.addresses.items()
assert addrs[0].type == "fixed" and addrs[0].addr.count(".") == 3, web.addresses
assert web.fixed_ip_assignments[0].ip_address == addrs[0].addr and web.fixed_ip_assignments[0].external
raw = inst.with_raw_response.get(web.id).http_response.json()
exact(Instance, raw, "instance")

# The same by hand: one task, NEW/RUNNING until FINISHED, which names the instance it created.
created = inst.create(name="gc-db-1", flavor="standard.small", interfaces=EXTERNAL, volumes=volumes(), tags={"env": "dev"})
assert len(created.tasks) == 1, created
task = gc.cloud.tasks.poll(created.tasks[0])
assert task.state == "FINISHED" and task.task_type == "create_vm", task
assert len(task.created_resources.instances) == 1, task.created_resources
db1 = inst.get(task.created_resources.instances[0])
assert db1.creator_task_id == task.id and db1.status == "ACTIVE"
raw_task = gc.cloud.tasks.with_raw_response.get(task.id).http_response.json()
exact(Task, raw_task, "task")
assert (raw_task["project_id"], raw_task["region_id"], raw_task["error"]) == (PROJECT, REGION, None)

# --- Name templates fill in the address.
templ = inst.create_and_poll(
    name_template="gc-tpl-{two_ip_octets}", flavor="standard.small", interfaces=EXTERNAL, volumes=volumes()
)
octets = list(templ.addresses.values())[0][0].addr.split(".")
assert templ.name == f"gc-tpl-{octets[2]}-{octets[3]}", templ.name

db2 = inst.create_and_poll(name="gc-db-2", flavor="standard.small", interfaces=EXTERNAL, volumes=volumes(), tags={"env": "dev", "tier": "db"})
other = inst.create_and_poll(name="other-1", flavor="standard.small", interfaces=EXTERNAL, volumes=volumes(), tags={"env": "prod"})

# --- List: filters, and paging that the SDK follows by offset.
everything = inst.list()
assert everything.count == 5 == len(everything.results), everything.count
for r in inst.with_raw_response.list().http_response.json()["results"]:
    exact(Instance, r, "listed instance")
names = lambda page: sorted(i.name for i in page.results)  # noqa: E731
assert names(inst.list(name="gc-db")) == ["gc-db-1", "gc-db-2"], "name is a substring match"
assert names(inst.list(tag_key_value=json.dumps({"env": "prod"}))) == ["gc-web-1", "other-1"]
assert names(inst.list(tag_key_value=json.dumps({"env": "dev", "tier": "db"}))) == ["gc-db-2"]
assert names(inst.list(tag_key_value=json.dumps({"nimbus.zone": READ_ONLY["nimbus.zone"]}))) == sorted(
    i.name for i in everything.results
), "read-only tags filter too"
assert names(inst.list(tag_value=["a", "db"])) == ["gc-db-2", "gc-web-1"]
assert inst.list(uuid=web.id[:13]).results[0].id == web.id
assert names(inst.list(order_by="name.desc"))[0] == "gc-db-1" and inst.list(order_by="name.desc").results[0].name == "other-1"
first = inst.list(limit=2)
assert (first.count, len(first.results)) == (5, 2), "count is the full total"
paged = [i.id for i in inst.list(limit=2)]  # iterating follows every page
assert sorted(paged) == sorted(i.id for i in everything.results) and len(paged) == 5, paged
second = inst.list(limit=2, offset=2)
assert [i.id for i in second.results] == [i.id for i in everything.results[2:4]]
assert inst.list(limit=2, offset=10).results == []

# --- PATCH: every tag case of the seed; the read-only tags survive each one.
def patch(**kw):
    updated = inst.update(web.id, **kw)
    assert tag_map(updated, True) == READ_ONLY, f"read-only tags changed by {kw}: {updated.tags}"
    fetched = inst.get(web.id)
    assert tag_map(fetched, False) == tag_map(updated, False), "PATCH answers what GET then shows"
    return tag_map(updated, False)


assert patch(tags={"environment": "production", "team": "backend"}) == {
    "env": "prod", "team": "backend", "environment": "production"
}, "add or overwrite"
assert patch(tags={"env": None}) == {"team": "backend", "environment": "production"}, "null deletes"
assert patch(tags={"absent": None}) == {"team": "backend", "environment": "production"}, "deleting a missing tag"
assert patch(tags={"environment": "staging"}) == {"team": "backend", "environment": "staging"}, "partial"
patch(tags={"deprecated_tag": "x"})
assert patch(tags={"environment": "production", "cost_center": "engineering", "deprecated_tag": None}) == {
    "team": "backend", "environment": "production", "cost_center": "engineering"
}, "mixed operations"
assert patch(tags={"team": None, "environment": None, "cost_center": None, "fresh": "start"}) == {
    "fresh": "start"
}, "replace all in one request"
assert patch(tags={}) == {"fresh": "start"}, "an empty patch changes nothing"
renamed = inst.update(web.id, name="gc-web-renamed")
assert renamed.name == "gc-web-renamed" and tag_map(renamed, False) == {"fresh": "start"}, "absent tags stay"
assert patch(tags=None) == {}, "tags: null removes every user tag"
exact(Instance, inst.with_raw_response.update(web.id, tags={"k": "v"}).http_response.json(), "patched")
# Read-only tags are always preserved: a patch naming one succeeds and leaves it as it was (a client that
# sends back every tag it read keeps working), while the rest of the patch applies.
for key in READ_ONLY:
    for attempt in ({key: "hijacked", "k": "w"}, {key: None}):
        updated = inst.update(web.id, tags=attempt)
        assert tag_map(updated, True) == READ_ONLY, f"read-only tag {key} changed: {updated.tags}"
assert tag_map(inst.get(web.id), True) == READ_ONLY
assert tag_map(inst.get(web.id), False) == {"k": "w"}
for bad in ({"has space": "x"}, {"k": "a=b"}):
    try:
        inst.update(web.id, tags=bad)
        raise AssertionError(f"{bad} accepted")
    except BadRequestError as e:
        assert "tags" in error_body(e)["invalid_fields"], e.body
assert inst.get(web.id).task_id is None, "PATCH runs no task"

# --- Actions, each with the status it leaves.
def act(action, status, vm_state):
    got = inst.action_and_poll(web.id, action=action)
    assert (got.status, got.vm_state, got.task_state, got.task_id) == (status, vm_state, None, None), (action, got)
    return got


act("stop", "SHUTOFF", "stopped")
act("start", "ACTIVE", "active")
act("reboot", "ACTIVE", "active")
act("reboot_hard", "ACTIVE", "active")
act("suspend", "SUSPENDED", "suspended")
try:
    inst.action(web.id, action="stop")
    raise AssertionError("stop of a suspended instance accepted")
except ConflictError as e:
    assert e.response.headers.get("x-should-retry") == "false", "not worth the SDK's retries"
    assert error_body(e)["exception_class"] == "InstanceInvalidStateError", e.body
act("resume", "ACTIVE", "active")
try:
    inst.action(web.id, action="start")
    raise AssertionError("start of a running instance accepted")
except ConflictError as e:
    assert "running" in error_body(e)["message"], e.body
try:
    inst.action(web.id, action="levitate")
    raise AssertionError("unknown action accepted")
except BadRequestError as e:
    assert "action" in error_body(e)["invalid_fields"], e.body

tasks = gc.cloud.tasks.list(limit=1000)
kinds = [t.task_type for t in tasks.results]
for kind in ["create_vm", "stop_vm", "start_vm", "reboot_vm", "hard_reboot_vm", "suspend_vm", "resume_vm"]:
    assert kind in kinds, (kind, kinds)
assert all(t.state == "FINISHED" for t in tasks.results), [t.state for t in tasks.results]
assert gc.cloud.tasks.list(state=["ERROR"]).count == 0
assert len(gc.cloud.tasks.list(limit=3).results) == 3

# --- Resize: like Gcore's, an ACTIVE instance changes to any flavor (another family too) and stays ACTIVE;
# a stopped one stays SHUTOFF.
assert inst.get(web.id).status == "ACTIVE"
resized = inst.resize_and_poll(web.id, flavor_id="cpu.small")
assert (resized.flavor.flavor_id, resized.flavor.vcpus, resized.flavor.ram) == ("cpu.small", 4, 2048), resized
assert (resized.status, resized.vm_state, resized.task_state, resized.task_id) == ("ACTIVE", "active", None, None), resized
assert native("GET", f"/v1/instances/{web.id}")["vcpus"] == 4
act("stop", "SHUTOFF", "stopped")
resized = inst.resize_and_poll(web.id, flavor_id="standard.medium")
assert (resized.flavor.flavor_id, resized.flavor.ram, resized.status) == ("standard.medium", 4096, "SHUTOFF"), resized
try:
    inst.resize(web.id, flavor_id="no-such-flavor")
    raise AssertionError("unknown flavor accepted")
except BadRequestError as e:
    assert "flavor_id" in error_body(e)["invalid_fields"], e.body
act("start", "ACTIVE", "active")

# --- Security groups, by name.
gc.cloud.security_groups.create_and_poll(name="web")
gc.cloud.security_groups.create_and_poll(name="ssh", rules=[])
assert inst.assign_security_group(web.id, name="web") is None
inst.assign_security_group(web.id, ports_security_group_names=[{"port_id": None, "security_group_names": ["ssh"]}])
assert sorted(g.name for g in inst.get(web.id).security_groups) == ["ssh", "web"]
assert web.id not in [i.id for i in inst.list(exclude_secgroup="web").results]
inst.unassign_security_group(web.id, name="web")
assert [g.name for g in inst.get(web.id).security_groups] == ["ssh"]
try:
    inst.assign_security_group(web.id, name="nope")
    raise AssertionError("unknown security group accepted")
except NotFoundError as e:
    assert error_body(e)["exception_class"] == "NotFoundError"

# --- Interfaces, metrics, console.
ifaces = inst.interfaces.list(web.id)
raw_ifaces = inst.interfaces.with_raw_response.list(web.id).http_response.json()
assert raw_ifaces["count"] == 1 == len(ifaces.results)
required(InstanceInterface, raw_ifaces["results"][0], "interface")
assert ifaces.results[0].ip_assignments[0].ip_address == addrs[0].addr
metrics = inst.metrics.list(web.id, time_interval=1, time_unit="hour")
assert metrics.count == 1 and 0 <= metrics.results[0].memory_util <= 100, metrics
exact(Metrics, inst.metrics.with_raw_response.list(web.id, time_interval=1, time_unit="hour").http_response.json()["results"][0], "metrics")
console = inst.get_console(web.id, console_type="serial")
assert f"/v1/instances/{web.id}/console/stream?ticket=" in console.remote_console.url, console
status, _ = open_console(console.remote_console.url)
assert status == "HTTP/1.1 101 Switching Protocols", f"the console URL opens with no API key: {status}"
assert open_console(console.remote_console.url)[0].startswith("HTTP/1.1 401"), "and only once"

# --- Delete and poll: gone from GET and from lists.
inst.delete_and_poll(web.id)
try:
    inst.get(web.id)
    raise AssertionError("a deleted instance is still found")
except NotFoundError as e:
    body = error_body(e)
    assert body["exception_class"] == "NotFoundError" and web.id in body["message"], body
assert web.id not in [i.id for i in inst.list().results] and inst.list().count == 4
for i in (db1, db2, other, templ):
    inst.delete_and_poll(i.id)
assert inst.list().count == 0

# --- Errors: unknown ids, another project or region, bad credentials, bad input.
for call in (
    lambda: inst.get("00000000-0000-4000-8000-000000000000"),
    lambda: inst.get("not-a-uuid"),
    lambda: gc.cloud.tasks.get("00000000-0000-4000-8000-000000000000"),
    lambda: inst.list(project_id=PROJECT + 1000),
    lambda: inst.list(region_id=REGION + 1000),
    lambda: gc.cloud.instances.images.get("00000000-0000-4000-8000-000000000000"),
):
    try:
        call()
        raise AssertionError("found what does not exist")
    except NotFoundError as e:
        assert error_body(e)["exception_class"] == "NotFoundError", e.body

try:
    client(api_key="wrong-secret").cloud.instances.list()
    raise AssertionError("a wrong key was accepted")
except AuthenticationError as e:
    assert error_body(e)["exception_class"] == "AuthenticationFailed", e.body
r = httpx.get(f"{URL}/cloud/v1/instances/{PROJECT}/{REGION}")
assert r.status_code == 401 and r.json()["exception_class"] == "NotAuthenticated", r.text
assert r.json()["message"] == "Authentication credentials were not provided.", r.text
r = httpx.get(f"{URL}/cloud/v1/tasks/{task.id}", headers={"Authorization": f"apikey {SECRET}"})
assert r.status_code == 200 and r.json()["id"] == task.id, "the scheme is case-insensitive"

try:
    inst.create(flavor="no-such-flavor", interfaces=[], volumes=volumes())
    raise AssertionError("a bad create was accepted")
except BadRequestError as e:
    body = error_body(e)
    assert body["exception_class"] == "ValidationError", body
    assert {"flavor", "interfaces"} <= set(body["invalid_fields"]), body
try:
    inst.create(name="x", flavor="standard.small", interfaces=EXTERNAL, volumes=[{"source": "new-volume", "size": 1}])
    raise AssertionError("a create without a boot volume from an image was accepted")
except BadRequestError as e:
    assert "volumes" in error_body(e)["invalid_fields"], e.body
assert inst.list().count == 0, "nothing was created by refused requests"
print("gcore lifecycle: ok")

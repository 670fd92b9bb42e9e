"""What a Gcore user sees while tasks run (the server's sim driver is slowed down): BUILD while the create
task runs, the instance locked by the task (`task_id`), NEW/RUNNING tasks, 409 for a second action on a
locked instance, `deleting` while the delete runs, then 404."""

import time

from gcore import ConflictError, NotFoundError

from common import client, error_body

gc = client(max_retries=0)
inst = gc.cloud.instances
image = next(i for i in inst.images.list().results if i.name == "busybox")
created = inst.create(
    name="slow-1",
    flavor="standard.small",
    interfaces=[{"type": "external"}],
    volumes=[{"source": "image", "image_id": image.id, "boot_index": 0}],
)
task_id = created.tasks[0]
task = gc.cloud.tasks.get(task_id)
assert task.state in ("NEW", "RUNNING"), task
building = inst.list(status="BUILD").results
assert len(building) == 1, [i.status for i in inst.list().results]
i = building[0]
assert (i.status, i.vm_state, i.task_id, i.creator_task_id) == ("BUILD", "building", task_id, task_id), i
assert i.task_state, "a task state while building"
assert inst.list(status="ACTIVE").count == 0

try:
    inst.action(i.id, action="stop")
    raise AssertionError("an action on a locked instance was accepted")
except ConflictError as e:
    body = error_body(e)
    assert task_id in body["message"], body
    assert e.response.headers.get("x-should-retry") != "false", "a lock is worth retrying"

i = inst.get(i.id)
task = gc.cloud.tasks.poll(task_id)
i = inst.get(i.id)
assert (i.status, i.task_id) == ("ACTIVE", None), i

stop = inst.action(i.id, action="stop").tasks[0]
i = inst.get(i.id)
assert (i.status, i.task_state, i.task_id) == ("ACTIVE", "powering-off", stop), i
gc.cloud.tasks.poll(stop)
assert inst.get(i.id).status == "SHUTOFF"

deleting = inst.delete(i.id).tasks[0]
i = inst.get(i.id)
assert (i.status, i.task_state, i.task_id) == ("SHUTOFF", "deleting", deleting), i
t = gc.cloud.tasks.get(deleting)
assert t.task_type == "delete_vm" and t.state in ("NEW", "RUNNING") and t.finished_on is None, t
gc.cloud.tasks.poll(deleting)
try:
    inst.get(i.id)
    raise AssertionError("a deleted instance is still found")
except NotFoundError:
    pass
assert gc.cloud.tasks.get(deleting).finished_on is not None
print("gcore transitions: ok")

"""A Gcore user's groups and passwords with the real `gcore` SDK, never touching the native API to make
them: security groups (create and poll, get, list, update and poll with a whole new rule set, delete),
server groups (create, list, get, put an instance in and take it out, each polled as a task, delete), and
an instance created with a password, which the native API then reveals. Strict response validation is on,
and raw responses carry exactly the keys of the SDK's models."""

from gcore import BadRequestError, NotFoundError
from gcore.types.cloud import PlacementGroup, SecurityGroup

from common import client, error_body, exact, native

gc = client()
sgs = gc.cloud.security_groups
inst = gc.cloud.instances
image = next(i for i in inst.images.list().results if i.name == "busybox")
VOLUMES = [{"source": "image", "image_id": image.id, "size": 10, "boot_index": 0}]
EXTERNAL = [{"type": "external"}]

# --- Security groups: the default template, exact rules, updates that replace the rule set.
web = sgs.create_and_poll(name="web", description="front ends")
assert (web.name, web.description) == ("web", "front ends"), web
assert sorted(r.direction for r in web.security_group_rules) == ["egress", "ingress"], "the default template"
assert all(r.protocol is None and r.security_group_id == web.id for r in web.security_group_rules)
exact(SecurityGroup, sgs.with_raw_response.get(web.id).http_response.json(), "security group")
ssh = sgs.create_and_poll(
    name="ssh",
    rules=[{"direction": "ingress", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
            "remote_ip_prefix": "10.0.0.0/8", "ethertype": "IPv4"}],
)
[rule] = ssh.security_group_rules
assert (rule.protocol, rule.port_range_min, rule.remote_ip_prefix) == ("tcp", 22, "10.0.0.0/8"), rule
assert sorted(g.name for g in sgs.list()) == ["ssh", "web"]
assert [g.id for g in sgs.list(name="ssh").results] == [ssh.id], "name is an exact match"
for raw in sgs.with_raw_response.list().http_response.json()["results"]:
    exact(SecurityGroup, raw, "listed security group")
assert native("GET", f"/v1/security-groups/{ssh.id}")["name"] == "ssh", "the core's group"

https = {"direction": "ingress", "protocol": "tcp", "port_range_min": 443, "port_range_max": 443}
keep = {"direction": rule.direction, "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
        "remote_ip_prefix": "10.0.0.0/8"}
sgs.update_and_poll(ssh.id, name="ssh-https", rules=[keep, https])
updated = sgs.get(ssh.id)
assert updated.name == "ssh-https" and sorted(r.port_range_min for r in updated.security_group_rules) == [22, 443]
assert rule.id in [r.id for r in updated.security_group_rules], "a rule that stays keeps its id"
try:
    sgs.create(name="v6", rules=[{"direction": "ingress", "ethertype": "IPv6"}])
    raise AssertionError("an IPv6 rule was accepted")
except BadRequestError as e:
    assert "rules.0.ethertype" in error_body(e)["invalid_fields"], e.body

# Used by an instance by name, then deleted.
vm = inst.create_and_poll(name="grp-vm", flavor="standard.small", interfaces=EXTERNAL, volumes=VOLUMES,
                          security_groups=[{"id": web.id}])
assert [g.name for g in vm.security_groups] == ["web"], vm.security_groups
inst.assign_security_group(vm.id, name="ssh-https")
assert sorted(g.name for g in inst.get(vm.id).security_groups) == ["ssh-https", "web"]
try:
    sgs.delete(web.id)
    raise AssertionError("a group in use was deleted")
except BadRequestError as e:
    assert "used by instance" in error_body(e)["message"], e.body
inst.unassign_security_group(vm.id, name="ssh-https")
assert sgs.delete(ssh.id) is None
try:
    sgs.get(ssh.id)
    raise AssertionError("a deleted group is still found")
except NotFoundError as e:
    assert error_body(e)["exception_class"] == "NotFoundError"

# --- Server groups: Nimbus's anti-affinity groups.
pgs = gc.cloud.placement_groups
spread = pgs.create(name="spread", policy="anti-affinity")
assert (spread.name, spread.policy, spread.instances) == ("spread", "anti-affinity", []), spread
exact(PlacementGroup, pgs.with_raw_response.get(spread.servergroup_id).http_response.json(), "server group")
try:
    pgs.create(name="together", policy="affinity")
    raise AssertionError("an affinity group was accepted")
except BadRequestError as e:
    assert "policy" in error_body(e)["invalid_fields"], e.body
joined = inst.add_to_placement_group_and_poll(vm.id, servergroup_id=spread.servergroup_id)
assert joined.id == vm.id and joined.status == "ACTIVE" and joined.task_id is None, joined
[member] = pgs.get(spread.servergroup_id).instances
assert (member.instance_id, member.instance_name) == (vm.id, "grp-vm"), member
assert [g.servergroup_id for g in pgs.list().results] == [spread.servergroup_id]
tasks = gc.cloud.tasks.list(task_type="put_into_servergroup")
assert tasks.count == 1 and tasks.results[0].state == "FINISHED", tasks
left = inst.remove_from_placement_group_and_poll(vm.id)
assert left.status == "ACTIVE" and pgs.get(spread.servergroup_id).instances == []
pgs.delete(spread.servergroup_id)
assert pgs.list().count == 0

# Created straight into a group.
spread = pgs.create(name="spread-2", policy="anti-affinity")
vm2 = inst.create_and_poll(name="grp-vm-2", flavor="standard.small", interfaces=EXTERNAL, volumes=VOLUMES,
                           servergroup_id=spread.servergroup_id)
assert [m.instance_id for m in pgs.get(spread.servergroup_id).instances] == [vm2.id]

# --- A password at create: the template's user's, revealed by the native API.
pw = inst.create_and_poll(name="grp-pw", flavor="standard.small", interfaces=EXTERNAL, volumes=VOLUMES,
                          password="Gcore-pass-2024", username="root")
assert native("GET", f"/v1/instances/{pw.id}/password")["password"] == "Gcore-pass-2024"
try:
    inst.create(name="grp-bad", flavor="standard.small", interfaces=EXTERNAL, volumes=VOLUMES, password="short")
    raise AssertionError("a short password was accepted")
except BadRequestError as e:
    assert "password" in error_body(e)["invalid_fields"], e.body

for i in (vm, vm2, pw):
    inst.delete_and_poll(i.id)
pgs.delete(spread.servergroup_id)
sgs.delete(web.id)
assert sgs.list().count == 0 and inst.list().count == 0
print("gcore groups: ok")

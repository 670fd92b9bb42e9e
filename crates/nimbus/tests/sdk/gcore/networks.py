"""A Gcore user's private networks with the real `gcore` SDK: networks and their one subnet (create and
poll, get, list, delete), instances created with interfaces on them (static address or the first free
one), interfaces attached and detached (each polled as a task), and the refusals: an address outside the
subnet, a second subnet, DHCP, detaching what is not attached; and a reserved fixed IP an instance is made
with, kept past it; a VIP the instance's port shares; an instance's own port reserved after the fact.
Strict response validation is on, and raw responses carry exactly the keys of the SDK's models.

Nimbus private networks are bookkeeping only: the VM gets no second NIC, so what is checked here is what
the API records and shows, not traffic."""

from gcore import BadRequestError, NotFoundError
from gcore.types.cloud import Network, ReservedFixedIP, Subnet, Task
from gcore.types.cloud.instance_interface import InstanceInterface
from gcore.types.cloud.reserved_fixed_ips.vip import CandidatePort, ConnectedPort

from common import client, error_body, exact, required

gc = client()
nets = gc.cloud.networks
subnets = nets.subnets
inst = gc.cloud.instances
image = next(i for i in inst.images.list().results if i.name == "busybox")
VOLUMES = [{"source": "image", "image_id": image.id, "size": 10, "boot_index": 0}]
EXTERNAL = {"type": "external"}


def refused(exc_type, call, field=None):
    try:
        call()
    except exc_type as e:
        body = error_body(e)
        if field:
            assert field in body.get("invalid_fields", {}), body
        return body
    raise AssertionError(f"not refused: {call}")


# --- A network and its one subnet.
created = nets.create(name="backend", tags={"team": "a"})
assert len(created.tasks) == 1, created
task = gc.cloud.tasks.poll(created.tasks[0])
assert task.state == "FINISHED" and task.task_type == "create_network", task
exact(Task, gc.cloud.tasks.with_raw_response.get(task.id).http_response.json(), "network task")
[net_id] = task.created_resources.networks
net = nets.get(net_id)
assert (net.name, net.external, net.shared, net.subnets) == ("backend", False, False, []), net
assert [(t.key, t.value, t.read_only) for t in net.tags] == [("team", "a", False)], net.tags
exact(Network, nets.with_raw_response.get(net.id).http_response.json(), "network")
other = nets.create_and_poll(name="frontend")
assert [n.name for n in nets.list().results] == ["frontend", "backend"], "newest first"
assert [n.name for n in nets.list(name="backend").results] == ["backend"]
assert [n.name for n in nets.list(tag_key_value='{"team": "a"}').results] == ["backend"]
shared = [n for n in nets.list(owned_by="any").results if n.name == "nimbus"]
assert len(shared) == 1 and shared[0].external and shared[0].shared, "the instance network, shared"
for raw in nets.with_raw_response.list(owned_by="any").http_response.json()["results"]:
    exact(Network, raw, "listed network")
refused(BadRequestError, lambda: nets.create(name="routed", create_router=True), "create_router")

sub = subnets.create_and_poll(network_id=net.id, name="backend-v4", cidr="10.50.0.0/24")
assert (sub.cidr, sub.gateway_ip, sub.network_id, sub.total_ips, sub.available_ips) == (
    "10.50.0.0/24", "10.50.0.1", net.id, 253, 253), sub
assert sub.enable_dhcp is False and sub.has_router is False, "no DHCP, no router: bookkeeping only"
exact(Subnet, subnets.with_raw_response.get(sub.id).http_response.json(), "subnet")
assert nets.get(net.id).subnets == [sub.id]
assert [s.id for s in subnets.list(network_id=net.id).results] == [sub.id]
assert len(subnets.list(owned_by="any").results) == 2, "and the instance network's"
body = refused(BadRequestError, lambda: subnets.create(network_id=net.id, name="second", cidr="10.51.0.0/24"),
               "network_id")
assert "one subnet" in body["message"], body
refused(BadRequestError, lambda: subnets.create(network_id=other.id, name="d", cidr="10.52.0.0/24",
                                                enable_dhcp=True), "enable_dhcp")
refused(BadRequestError, lambda: subnets.create(network_id=other.id, name="h", cidr="10.52.0.7/24"), "cidr")
refused(NotFoundError, lambda: subnets.get("00000000-0000-0000-0000-000000000000"))

# --- An instance created on the subnet: a static address, beside its one real NIC.
db = inst.create_and_poll(
    name="net-db", flavor="standard.small", volumes=VOLUMES,
    interfaces=[EXTERNAL, {"type": "any_subnet", "network_id": net.id, "ip_address": "10.50.0.10",
                           "interface_name": "eth1"}],
)
assert [a.addr for a in db.addresses["backend"]] == ["10.50.0.10"], db.addresses
[addr] = db.addresses["backend"]
assert (addr.subnet_id, addr.subnet_name, addr.interface_name) == (sub.id, "backend-v4", "eth1"), addr
assert {(f.ip_address, f.external) for f in db.fixed_ip_assignments} >= {("10.50.0.10", False)}
assert len(db.addresses) == 2, "the instance network's address is still there"
ifaces = inst.interfaces.list(db.id)
assert ifaces.count == 2, ifaces
for raw in inst.interfaces.with_raw_response.list(db.id).http_response.json()["results"]:
    required(InstanceInterface, raw, "interface")
private = next(i for i in ifaces.results if i.network_id == net.id)
assert private.ip_assignments[0].ip_address == "10.50.0.10" and private.interface_name == "eth1", private
assert private.network_details.subnets[0].id == sub.id, private.network_details

# Refused: an address outside the subnet, or one already leased; nothing is left behind.
before = inst.list().count
outside = [EXTERNAL, {"type": "any_subnet", "network_id": net.id, "ip_address": "10.60.0.5"}]
body = refused(BadRequestError, lambda: inst.create(name="x", flavor="standard.small", volumes=VOLUMES,
                                                    interfaces=outside), "interfaces.1.ip_address")
assert "outside" in body["message"], body
taken = [{"type": "any_subnet", "network_id": net.id, "ip_address": "10.50.0.10"}]
refused(BadRequestError, lambda: inst.create(name="x", flavor="standard.small", volumes=VOLUMES,
                                             interfaces=taken), "interfaces.0.ip_address")
no_subnet = [{"type": "any_subnet", "network_id": other.id}]
refused(BadRequestError, lambda: inst.create(name="x", flavor="standard.small", volumes=VOLUMES,
                                             interfaces=no_subnet), "interfaces.0.network_id")
assert inst.list().count == before

# A `subnet` interface alone: the first free address; the real NIC shows as the external interface.
app = inst.create_and_poll(name="net-app", flavor="standard.small", volumes=VOLUMES,
                           interfaces=[{"type": "subnet", "network_id": net.id, "subnet_id": sub.id}])
assert [a.addr for a in app.addresses["backend"]] == ["10.50.0.2"], app.addresses
assert subnets.get(sub.id).available_ips == 251

# --- Attach and detach on a running instance, each a task.
web = inst.create_and_poll(name="net-web", flavor="standard.small", volumes=VOLUMES, interfaces=[EXTERNAL])
assert inst.interfaces.list(web.id).count == 1
attached = inst.interfaces.attach(web.id, type="subnet", subnet_id=sub.id, interface_name="backend0")
task = gc.cloud.tasks.poll(attached.tasks[0])
assert task.task_type == "attach_interface" and len(task.created_resources.ports) == 1, task
exact(Task, gc.cloud.tasks.with_raw_response.get(task.id).http_response.json(), "attach task")
web = inst.get(web.id)
[addr] = web.addresses["backend"]
assert addr.addr == "10.50.0.3" and addr.interface_name == "backend0", web.addresses
port = next(i for i in inst.interfaces.list(web.id).results if i.network_id == net.id)
assert port.port_id == task.created_resources.ports[0]
refused(BadRequestError, lambda: inst.interfaces.attach(web.id, type="any_subnet", network_id=net.id))
refused(BadRequestError, lambda: inst.interfaces.attach(web.id, type="external"), "type")
refused(BadRequestError, lambda: subnets.delete(sub.id))
refused(BadRequestError, lambda: nets.delete(net.id))

main = next(i for i in inst.interfaces.list(web.id).results if i.network_id != net.id)
refused(BadRequestError, lambda: inst.interfaces.detach(
    web.id, port_id=main.port_id, ip_address=main.ip_assignments[0].ip_address))
refused(BadRequestError, lambda: inst.interfaces.detach(web.id, port_id=port.port_id, ip_address="10.50.0.99"),
        "ip_address")
inst.interfaces.detach_and_poll(web.id, port_id=port.port_id, ip_address="10.50.0.3")
web = inst.get(web.id)
assert "backend" not in web.addresses and inst.interfaces.list(web.id).count == 1, web.addresses
body = refused(NotFoundError, lambda: inst.interfaces.detach(web.id, port_id=port.port_id, ip_address="10.50.0.3"))
assert "could not be found" in body["message"], body
# The address is free again, for the next attach.
inst.interfaces.attach_and_poll(web.id, type="any_subnet", network_id=net.id)
assert [a.addr for a in inst.get(web.id).addresses["backend"]] == ["10.50.0.3"]

# --- Deleting the instances releases their leases; then the subnet and the network go.
for i in (db, app, web):
    inst.delete_and_poll(i.id)
assert subnets.get(sub.id).available_ips == 253
gc.cloud.tasks.poll(subnets.delete(sub.id).tasks[0])
assert nets.get(net.id).subnets == [] and subnets.list(network_id=net.id).count == 0
nets.delete_and_poll(net.id)
nets.delete_and_poll(other.id)
refused(NotFoundError, lambda: nets.get(net.id))
assert nets.list().count == 0
# --- A reserved fixed IP: an address of the instance network held apart, given to the instance made with
# it, kept when that instance goes, deleted with the one whose delete names it.
fixed = gc.cloud.reserved_fixed_ips
reserved = fixed.create_and_poll(type="external")
exact(ReservedFixedIP, fixed.with_raw_response.get(reserved.port_id).http_response.json(), "reserved fixed ip")
assert reserved.reservation.status == "available" and reserved.is_external and not reserved.is_vip, reserved
holder = inst.create_and_poll(flavor="standard.small", name="holder", volumes=VOLUMES,
                              interfaces=[{"type": "reserved_fixed_ip", "port_id": reserved.port_id}])
[held] = [a.addr for a in holder.addresses[next(iter(holder.addresses))]]
assert held == reserved.fixed_ip_address, (held, reserved.fixed_ip_address)
assert fixed.get(reserved.port_id).reservation.resource_id == holder.id
assert [r.port_id for r in fixed.list(available_only=True)] == []
refused(BadRequestError, lambda: fixed.delete(reserved.port_id))
# A VIP: held by no instance, shared by the ports connected to it, which then allow its address.
vip = fixed.create_and_poll(type="external", is_vip=True)
assert vip.is_vip and vip.reservation.status == "available", vip
raw = fixed.vip.candidate_ports.with_raw_response.list(vip.port_id).http_response.json()
exact(CandidatePort, raw["results"][0], "candidate port")
[nic] = [c for c in fixed.vip.candidate_ports.list(vip.port_id).results if c.instance_id == holder.id]
connected = fixed.vip.connected_ports.replace(vip.port_id, port_ids=[nic.port_id])
assert [p.instance_id for p in connected.results] == [holder.id], connected
raw = fixed.vip.connected_ports.with_raw_response.list(vip.port_id).http_response.json()
exact(ConnectedPort, raw["results"][0], "connected port")
main = next(i for i in inst.interfaces.list(holder.id).results if i.port_id == nic.port_id)
assert [p.ip_address for p in main.allowed_address_pairs] == [vip.fixed_ip_address], main
refused(BadRequestError, lambda: fixed.vip.toggle(vip.port_id, is_vip=False))
assert fixed.vip.connected_ports.replace(vip.port_id, port_ids=[]).count == 0
assert not fixed.vip.toggle(vip.port_id, is_vip=False).is_vip
gc.cloud.tasks.poll(fixed.delete(vip.port_id).tasks[0])
inst.delete_and_poll(holder.id)
assert fixed.get(reserved.port_id).reservation.status == "available"
holder = inst.create_and_poll(flavor="standard.small", name="holder-again", volumes=VOLUMES,
                              interfaces=[{"type": "reserved_fixed_ip", "port_id": reserved.port_id}])
inst.delete_and_poll(holder.id, reserved_fixed_ips=reserved.port_id)
refused(NotFoundError, lambda: fixed.get(reserved.port_id))
assert fixed.list().count == 0
# An instance's own port reserved after the fact (type "port"): the reservation is that port, and keeps
# its address when the instance goes.
plain = inst.create_and_poll(flavor="standard.small", name="plain", volumes=VOLUMES, interfaces=[EXTERNAL])
[nic] = inst.interfaces.list(plain.id).results
kept = fixed.create_and_poll(type="port", port_id=nic.port_id)
assert kept.port_id == nic.port_id and kept.reservation.resource_id == plain.id, kept
assert kept.fixed_ip_address == nic.ip_assignments[0].ip_address, (kept, nic)
inst.delete_and_poll(plain.id)
assert fixed.get(kept.port_id).reservation.status == "available"
gc.cloud.tasks.poll(fixed.delete(kept.port_id).tasks[0])
assert fixed.list().count == 0

print("gcore networks: ok")

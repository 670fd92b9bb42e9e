"""The whole Exoscale instance lifecycle through the real `exoscale` Python SDK against a Nimbus server,
every response validated against the official OpenAPI document (schema_check.py).

The SDK is pointed at Nimbus the way a user would: the anonymous zone list of the server's `/v2` URL
advertises the zone's `api-endpoint`, and the client is built on that endpoint. Operations are awaited
with the SDK's own `Client.wait`.
"""

import base64
import json
import os
import sys
import time
import urllib.parse

import requests

import schema_check

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from wsprobe import open_console  # noqa: E402

URL = os.environ["NIMBUS_URL"]
KEY = os.environ["NIMBUS_KEY"]
SECRET = os.environ["NIMBUS_SECRET"]
BASE = URL + "/v2"

recorder = schema_check.install(BASE)

from exoscale.api.v2 import Client  # noqa: E402
from exoscale.api.exceptions import (  # noqa: E402
    ExoscaleAPIAuthException,
    ExoscaleAPIClientException,
)
import exoscale_auth  # noqa: E402


def step(msg):
    print(f"-- {msg}", flush=True)


def refused(call, status, contains=""):
    """`call` must fail with `status` and an Exoscale error body whose message contains `contains`."""
    try:
        result = call()
    except (ExoscaleAPIClientException, ExoscaleAPIAuthException) as e:
        response = e.response
        assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
        message = response.json()["message"]
        assert contains in message, f"{contains!r} not in {message!r}"
        return message
    raise AssertionError(f"expected a {status} refusal, got {result}")


# Zones: anonymous, advertising this server's own endpoint.
step("zones")
bootstrap = Client(KEY, SECRET, url=BASE)
zones = bootstrap.list_zones()["zones"]
assert len(zones) == 1, zones
zone = zones[0]
assert zone["api-endpoint"] == BASE, zone
c = Client(KEY, SECRET, url=zone["api-endpoint"])

# The SDK's own client for the zone's name works too once its server template points at Nimbus, as the
# notes describe for code that only knows zone names.
Client._api_spec["servers"][0]["url"] = BASE.replace("/v2", "") + "/v2"
by_zone = Client(KEY, SECRET, zone=zone["name"])
assert by_zone.endpoint == BASE, by_zone.endpoint

step("catalog")
types = c.list_instance_types()["instance-types"]


def itype(family, size):
    return next(t for t in types if t["family"] == family and t["size"] == size)


small, medium, cpu_small = itype("standard", "small"), itype("standard", "medium"), itype("cpu", "small")
assert small["cpus"] == 2 and small["memory"] == 2 * 1024**3, small
assert c.get_instance_type(id=small["id"]) == small
templates = c.list_templates(visibility="public")["templates"]
busybox = next(t for t in templates if t["name"] == "busybox")
assert busybox["password-enabled"] is True
assert c.get_template(id=busybox["id"])["id"] == busybox["id"]

step("ssh key, security group, anti-affinity group")
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test"
op = c.register_ssh_key(name="laptop", public_key=PUBKEY)
done = c.wait(op["id"])
assert done["state"] == "success" and done["reference"]["command"] == "get-ssh-key", done
key = c.get_ssh_key(name="laptop")
assert key["fingerprint"].startswith("SHA256:"), key
refused(lambda: c.register_ssh_key(name="laptop", public_key=PUBKEY), 409, "already exists")
sg = c.wait(c.create_security_group(name="web", description="web servers")["id"])["reference"]["id"]
aag = c.wait(c.create_anti_affinity_group(name="spread")["id"])["reference"]["id"]
assert c.get_security_group(id=sg)["name"] == "web"
assert c.get_anti_affinity_group(id=aag)["name"] == "spread"

step("create")
user_data = base64.b64encode(b"#cloud-config\nhostname: web\n").decode()
op = c.create_instance(
    name="web-1",
    disk_size=10,
    instance_type={"id": small["id"]},
    template={"id": busybox["id"]},
    labels={"env": "test"},
    ssh_keys=[{"name": "laptop"}],
    security_groups=[{"id": sg}],
    anti_affinity_groups=[{"id": aag}],
    user_data=user_data,
)
assert op["state"] in ("pending", "success"), op
done = c.wait(op["id"], max_wait_time=120)
assert done["reference"]["command"] == "get-instance", done
iid = done["reference"]["id"]
assert done["reference"]["link"] == f"/v2/instance/{iid}"

i = c.get_instance(id=iid)
assert i["state"] == "running", i
assert i["name"] == "web-1" and i["disk-size"] == 10 and i["labels"] == {"env": "test"}, i
assert i["instance-type"]["id"] == small["id"] and i["template"]["id"] == busybox["id"], i
assert i["ssh-key"]["name"] == "laptop" and i["ssh-keys"][0]["fingerprint"] == key["fingerprint"], i
assert i["security-groups"] == [{"id": sg}] and i["anti-affinity-groups"] == [{"id": aag}], i
assert i["user-data"] == user_data and i["tpm-enabled"] is False and i["secureboot-enabled"] is False, i
ip = i["public-ip"]
listed = c.list_instances()["instances"]
assert [x["id"] for x in listed] == [iid], listed
assert listed[0]["security-groups"][0]["name"] == "web", listed[0]
assert [x["id"] for x in c.list_instances(ip_address=ip)["instances"]] == [iid]
assert c.list_instances(ip_address="192.0.2.1")["instances"] == []
assert c.get_anti_affinity_group(id=aag)["instances"] == [{"id": iid}]
refused(lambda: c.delete_security_group(id=sg), 400, "used by instance")

step("security groups: attach, detach, rules")
sg2 = c.wait(c.create_security_group(name="ssh")["id"])["reference"]["id"]
done = c.wait(c.attach_instance_to_security_group(id=sg2, instance={"id": iid})["id"])
assert done["reference"]["id"] == sg2, done
assert c.get_instance(id=iid)["security-groups"] == [{"id": sg}, {"id": sg2}]
done = c.wait(c.add_rule_to_security_group(id=sg2, flow_direction="ingress", protocol="tcp", start_port=22,
                                           end_port=22, network="0.0.0.0/0", description="ssh")["id"])
assert done["reference"]["id"] == sg2, done
c.wait(c.add_rule_to_security_group(id=sg2, flow_direction="ingress", protocol="icmp",
                                    icmp={"type": 8, "code": 0}, security_group={"id": sg})["id"])
rules = c.get_security_group(id=sg2)["rules"]
assert [r["protocol"] for r in rules] == ["tcp", "icmp"], rules
assert rules[0]["start-port"] == 22 and rules[0]["end-port"] == 22 and rules[0]["network"] == "0.0.0.0/0", rules
assert rules[1]["security-group"]["id"] == sg and rules[1]["icmp"] == {"type": 8, "code": 0}, rules
refused(lambda: c.add_rule_to_security_group(id=sg2, flow_direction="ingress", protocol="tcp", start_port=80,
                                             end_port=22, network="0.0.0.0/0"), 400, "port")
refused(lambda: c.add_rule_to_security_group(id=sg2, flow_direction="ingress", protocol="tcp", start_port=22,
                                             end_port=22, network="0.0.0.0/0"), 400, "already has this rule")
c.wait(c.delete_rule_from_security_group(id=sg2, rule_id=rules[0]["id"])["id"])
assert [r["protocol"] for r in c.get_security_group(id=sg2)["rules"]] == ["icmp"]
refused(lambda: c.delete_rule_from_security_group(id=sg2, rule_id=rules[0]["id"]), 404)
c.wait(c.detach_instance_from_security_group(id=sg2, instance={"id": iid})["id"])
assert c.get_instance(id=iid)["security-groups"] == [{"id": sg}]
c.wait(c.delete_security_group(id=sg2)["id"])

step("private networks: a range, static and automatic leases (bookkeeping only)")
pn = c.wait(c.create_private_network(name="back", start_ip="172.16.0.10", end_ip="172.16.0.20",
                                     netmask="255.255.255.0", labels={"tier": "db"})["id"])["reference"]["id"]
n = c.get_private_network(id=pn)
assert n["start-ip"] == "172.16.0.10" and n["netmask"] == "255.255.255.0" and n["leases"] == [], n
assert n["labels"] == {"tier": "db"}, n
assert [x["id"] for x in c.list_private_networks()["private-networks"]] == [pn]
refused(lambda: c.create_private_network(name="bad", start_ip="172.16.0.10", end_ip="172.16.1.20",
                                         netmask="255.255.255.0"), 400, "subnet")
refused(lambda: c.attach_instance_to_private_network(id=pn, instance={"id": iid}, ip="172.16.0.30"), 400,
        "outside")
c.wait(c.attach_instance_to_private_network(id=pn, instance={"id": iid}, ip="172.16.0.15")["id"])
i = c.get_instance(id=iid)
assert [p["id"] for p in i["private-networks"]] == [pn], i
assert i["private-networks"][0]["mac-address"] != i["mac-address"], i
assert c.get_private_network(id=pn)["leases"] == [{"instance-id": iid, "ip": "172.16.0.15"}]
refused(lambda: c.attach_instance_to_private_network(id=pn, instance={"id": iid}), 400, "already attached")
c.wait(c.update_private_network_instance_ip(id=pn, instance={"id": iid}, ip="172.16.0.16")["id"])
assert c.get_private_network(id=pn)["leases"] == [{"instance-id": iid, "ip": "172.16.0.16"}]
refused(lambda: c.update_private_network(id=pn, start_ip="172.16.0.17", end_ip="172.16.0.20",
                                         netmask="255.255.255.0"), 400, "outside the new range")
c.wait(c.update_private_network(id=pn, name="backend", description="db traffic")["id"])
assert c.get_private_network(id=pn)["name"] == "backend"
refused(lambda: c.delete_private_network(id=pn), 400, "used by instance")
c.wait(c.detach_instance_from_private_network(id=pn, instance={"id": iid})["id"])
assert c.get_instance(id=iid)["private-networks"] == [] and c.get_private_network(id=pn)["leases"] == []
# Attached again, automatically: the lowest free address; it stays until the instance is deleted.
c.wait(c.attach_instance_to_private_network(id=pn, instance={"id": iid})["id"])
assert c.get_private_network(id=pn)["leases"] == [{"instance-id": iid, "ip": "172.16.0.10"}]

step("elastic IPs (bookkeeping only: nothing is routed to them)")
eip = c.wait(c.create_elastic_ip(description="front")["id"])["reference"]["id"]
e = c.get_elastic_ip(id=eip)
assert e["ip"].startswith("198.51.100.") and e["addressfamily"] == "inet4" and e["ip"] != ip, e
refused(lambda: c.create_elastic_ip(addressfamily="inet6"), 400, "IPv6")
c.wait(c.attach_instance_to_elastic_ip(id=eip, instance={"id": iid})["id"])
assert c.get_instance(id=iid)["elastic-ips"] == [{"id": eip}]
refused(lambda: c.attach_instance_to_elastic_ip(id=eip, instance={"id": iid}), 400, "already attached")
refused(lambda: c.delete_elastic_ip(id=eip), 400, "attached")
c.wait(c.update_elastic_ip(id=eip, labels={"role": "front"})["id"])
assert [x["labels"] for x in c.list_elastic_ips()["elastic-ips"]] == [{"role": "front"}]
c.wait(c.detach_instance_from_elastic_ip(id=eip, instance={"id": iid})["id"])
assert c.get_instance(id=iid)["elastic-ips"] == []
c.wait(c.attach_instance_to_elastic_ip(id=eip, instance={"id": iid})["id"])

step("password kept from creation")
first_password = c.reveal_instance_password(id=iid)["password"]
assert len(first_password) >= 16

step("update replaces labels; reset-instance-field clears them")
c.wait(c.update_instance(id=iid, name="web-2", labels={"env": "prod", "tier": "web"})["id"])
i = c.get_instance(id=iid)
assert i["name"] == "web-2" and i["labels"] == {"env": "prod", "tier": "web"}, i
c.wait(c.update_instance(id=iid, labels={"tier": "web"})["id"])
assert c.get_instance(id=iid)["labels"] == {"tier": "web"}
assert [x["id"] for x in c.list_instances(labels="tier=web")["instances"]] == [iid]
c.wait(c.reset_instance_field(id=iid, field="labels")["id"])
assert c.get_instance(id=iid)["labels"] == {}
step("dual assignment: an IPv6 address from the operator's prefix (bookkeeping only)")
c.wait(c.update_instance(id=iid, public_ip_assignment="dual")["id"])
i = c.get_instance(id=iid)
assert i["public-ip-assignment"] == "dual" and i["ipv6-address"].startswith("2001:db8:"), i
c.wait(c.update_instance(id=iid, public_ip_assignment="inet4")["id"])
assert "ipv6-address" not in c.get_instance(id=iid)
refused(lambda: c.update_instance(id=iid, public_ip_assignment="inet6"), 400, "public-ip-assignment")

step("reverse DNS")
refused(lambda: c.get_reverse_dns_instance(id=iid), 404)
c.wait(c.update_reverse_dns_instance(id=iid, domain_name="web.example.com")["id"])
assert c.get_reverse_dns_instance(id=iid) == {"domain-name": "web.example.com"}
c.wait(c.delete_reverse_dns_instance(id=iid)["id"])
refused(lambda: c.get_reverse_dns_instance(id=iid), 404)

step("protection")
c.wait(c.add_instance_protection(id=iid)["id"])
refused(lambda: c.delete_instance(id=iid), 400, "protected")
assert c.get_instance(id=iid)["state"] == "running"
c.wait(c.remove_instance_protection(id=iid)["id"])

step("a running instance refuses what needs it stopped")
refused(lambda: c.scale_instance(id=iid, instance_type={"id": medium["id"]}), 400, "Only stopped instances")
refused(lambda: c.resize_instance_disk(id=iid, disk_size=20), 400, "Only stopped instances")
refused(lambda: c.enable_tpm(id=iid), 400, "Only stopped instances")
refused(lambda: c.start_instance(id=iid), 400, "Only stopped instances can be started")

step("console")

console = c.get_console_proxy_url(id=iid)
assert console["url"] == f"ws://{console['host']}{console['path']}", console
assert console["path"].startswith(f"/v1/instances/{iid}/console/stream?ticket="), console
assert console["host"] == urllib.parse.urlsplit(URL).netloc, console
status, output = open_console(console["url"])
assert status == "HTTP/1.1 101 Switching Protocols", status
assert output, "the serial console speaks first"
status, _ = open_console(console["url"])
assert status.startswith("HTTP/1.1 401"), f"a console URL opens once: {status}"
fresh = c.get_console_proxy_url(id=iid)["url"]
forged = fresh[:-4] + ("BBBB" if fresh.endswith("AAAA") else "AAAA")
assert open_console(forged)[0].startswith("HTTP/1.1 401"), "a forged ticket opens nothing"
assert open_console(fresh)[0] == "HTTP/1.1 101 Switching Protocols", "and spends nothing"

step("snapshot")
op = c.create_snapshot(id=iid)
done = c.wait(op["id"])
assert done["reference"]["command"] == "get-snapshot", done
snap = done["reference"]["id"]
s = c.get_snapshot(id=snap)
assert s["state"] == "ready" and s["instance"]["id"] == iid, s
assert snap in [x["id"] for x in c.list_snapshots()["snapshots"]]
assert c.get_instance(id=iid)["snapshots"] == [{"id": snap}]
refused(lambda: c.revert_instance_to_snapshot(instance_id=iid, id=snap), 400, "Only stopped instances")

step("stop")
c.wait(c.stop_instance(id=iid)["id"])
assert c.get_instance(id=iid)["state"] == "stopped"
refused(lambda: c.stop_instance(id=iid), 400, "Only running instances can be stopped.")

step("disk only grows")
c.wait(c.resize_instance_disk(id=iid, disk_size=20)["id"])
assert c.get_instance(id=iid)["disk-size"] == 20
refused(lambda: c.resize_instance_disk(id=iid, disk_size=15), 400, "only grow")
refused(lambda: c.resize_instance_disk(id=iid, disk_size=20), 400, "only grow")
refused(lambda: c.resize_instance_disk(id=iid, disk_size=5), 400, "disk-size")

step("scale within the family")
c.wait(c.scale_instance(id=iid, instance_type={"id": medium["id"]})["id"])
assert c.get_instance(id=iid)["instance-type"]["id"] == medium["id"]
refused(lambda: c.scale_instance(id=iid, instance_type={"id": cpu_small["id"]}), 400, "family")

step("revert while stopped keeps the grown disk")
c.wait(c.revert_instance_to_snapshot(instance_id=iid, id=snap)["id"])
i = c.get_instance(id=iid)
assert i["state"] == "stopped" and i["disk-size"] == 20, i

step("promote the snapshot to a template")
op = c.promote_snapshot_to_template(id=snap, name="promoted", default_user="root")
done = c.wait(op["id"])
assert done["reference"]["command"] == "get-template", done
t = c.get_template(id=done["reference"]["id"])
assert t["name"] == "promoted" and t["visibility"] == "private", t
c.wait(c.delete_snapshot(id=snap)["id"])
assert c.list_snapshots()["snapshots"] == [] and c.get_instance(id=iid)["snapshots"] == []

step("tpm, one way")
c.wait(c.enable_tpm(id=iid)["id"])
assert c.get_instance(id=iid)["tpm-enabled"] is True
refused(lambda: c.enable_tpm(id=iid), 400, "already enabled")

step("reset-password makes a new one")
c.wait(c.reset_instance_password(id=iid)["id"])
assert c.reveal_instance_password(id=iid)["password"] != first_password

step("start, reboot, reset")
c.wait(c.start_instance(id=iid)["id"])
assert c.get_instance(id=iid)["state"] == "running"
c.wait(c.reboot_instance(id=iid)["id"])
c.wait(c.reset_instance(id=iid)["id"])
i = c.get_instance(id=iid)
assert i["state"] == "running" and i["disk-size"] == 20, i

step("templates without passwords keep none")
native = requests.post(f"{URL}/v1/templates", headers={"Authorization": f"Bearer {SECRET}"},
                       json={"name": "nopass", "source": "sim", "password_enabled": False,
                             "ssh_key_enabled": True, "min_disk_gb": 1})
assert native.status_code in (200, 201), native.text
nopass = native.json()["id"]
assert c.get_template(id=nopass)["password-enabled"] is False
other = c.wait(c.create_instance(disk_size=10, instance_type={"id": small["id"]},
                                 template={"id": nopass}, auto_start=False)["id"])["reference"]["id"]
assert c.get_instance(id=other)["state"] == "stopped"
refused(lambda: c.reveal_instance_password(id=other), 400, "does not support passwords")
refused(lambda: c.reset_instance_password(id=other), 400, "does not support passwords")
c.wait(c.delete_instance(id=other)["id"])

step("unknown ids")
refused(lambda: c.get_instance(id="00000000-0000-4000-8000-000000000000"), 404, "Instance not found")
refused(lambda: c.get_operation(id="00000000-0000-4000-8000-000000000000"), 404, "Operation not found")
refused(lambda: c.get_snapshot(id="00000000-0000-4000-8000-000000000000"), 404)
refused(lambda: c.create_instance(disk_size=10, instance_type={"id": small["id"]},
                                  template={"id": "00000000-0000-4000-8000-000000000000"}), 400, "template")

step("signatures")
wrong = Client(KEY, "not-the-secret-at-all", url=BASE)
assert refused(lambda: wrong.list_instances(), 403) == "Invalid request signature"
# A forged request learns nothing, not even whether the instance exists.
assert refused(lambda: wrong.get_instance(id=iid), 403) == "Invalid request signature"
assert refused(lambda: Client("EXOunknown", SECRET, url=BASE).list_instances(), 403) == "Invalid request signature"
signer = exoscale_auth.ExoscaleV2Auth.__call__


def expired_signer(self, request):
    self._sign_request(request, int(time.time() - 60))
    return request


exoscale_auth.ExoscaleV2Auth.__call__ = expired_signer
try:
    assert refused(lambda: Client(KEY, SECRET, url=BASE).list_instances(), 403) == "Request expired"
finally:
    exoscale_auth.ExoscaleV2Auth.__call__ = signer
bare = requests.get(f"{BASE}/instance")
assert bare.status_code == 403 and "message" in bare.json(), bare.text
# The body is signed: the same header on another body is refused.
prepared = c.http_client.prepare_request(requests.Request("PUT", f"{BASE}/instance/{iid}", json={"name": "a"}))
prepared.body = b'{"name": "b"}'
prepared.headers["Content-Length"] = str(len(prepared.body))
tampered = c.http_client.send(prepared)
assert tampered.status_code == 403, tampered.text
assert c.get_instance(id=iid)["name"] == "web-2"

step("delete")
c.wait(c.delete_instance(id=iid)["id"])
refused(lambda: c.get_instance(id=iid), 404)
assert c.list_instances()["instances"] == []
c.wait(c.delete_security_group(id=sg)["id"])
c.wait(c.delete_anti_affinity_group(id=aag)["id"])
# A deleted instance holds no lease nor elastic IP any more.
assert c.get_private_network(id=pn)["leases"] == []
c.wait(c.delete_private_network(id=pn)["id"])
refused(lambda: c.get_private_network(id=pn), 404, "Private network not found")
c.wait(c.delete_elastic_ip(id=eip)["id"])
assert c.list_elastic_ips()["elastic-ips"] == []
c.wait(c.delete_ssh_key(name="laptop")["id"])
assert c.list_ssh_keys()["ssh-keys"] == []

step("the schema check refuses what is wrong")
good = recorder.samples["get-instance"]
schema_check.validate("get-instance", schema_check.schema_for(
    schema_check.operation_of("GET", "/instance/x")[1], 200), good)
schema_check.must_fail("get-instance", {**good, "disk-size": "20"}, "a mistyped field")
renamed = {k: v for k, v in good.items() if k != "tpm-enabled"}
schema_check.must_fail("get-instance", {**renamed, "tpm_enabled": False}, "a misnamed field")
schema_check.must_fail("get-instance", {k: v for k, v in good.items() if k != "state"}, "a missing field")
schema_check.must_fail("get-instance", {**good, "state": "creating"}, "a state outside the enum")
schema_check.must_fail("get-instance", {**good, "created-at": "yesterday"}, "a bad timestamp")
op = recorder.samples["get-operation"]
schema_check.must_fail("get-operation", {**op, "state": "failure"}, "a failure without a reason")
schema_check.must_fail("get-operation", {**op, "state": "running"}, "a native operation state")

wanted = {
    "list-zones", "list-instance-types", "get-instance-type", "list-templates", "get-template",
    "register-ssh-key", "get-ssh-key", "list-ssh-keys", "delete-ssh-key",
    "create-security-group", "get-security-group", "delete-security-group",
    "create-anti-affinity-group", "get-anti-affinity-group", "delete-anti-affinity-group",
    "create-instance", "get-instance", "list-instances", "update-instance", "reset-instance-field",
    "delete-instance", "start-instance", "stop-instance", "reboot-instance", "reset-instance",
    "scale-instance", "resize-instance-disk", "create-snapshot", "revert-instance-to-snapshot",
    "get-snapshot", "list-snapshots", "delete-snapshot", "promote-snapshot-to-template", "reveal-instance-password",
    "reset-instance-password", "add-instance-protection", "remove-instance-protection", "enable-tpm",
    "get-console-proxy-url", "get-operation", "get-reverse-dns-instance", "update-reverse-dns-instance",
    "delete-reverse-dns-instance",
    "attach-instance-to-security-group", "detach-instance-from-security-group", "add-rule-to-security-group",
    "delete-rule-from-security-group", "create-private-network", "list-private-networks", "get-private-network",
    "update-private-network", "delete-private-network", "attach-instance-to-private-network",
    "detach-instance-from-private-network", "update-private-network-instance-ip", "create-elastic-ip",
    "list-elastic-ips", "get-elastic-ip", "update-elastic-ip", "delete-elastic-ip",
    "attach-instance-to-elastic-ip", "detach-instance-from-elastic-ip",
}
missing = wanted - set(recorder.validated)
assert not missing, f"never validated: {sorted(missing)}"
print(json.dumps(dict(sorted(recorder.validated.items())), indent=1))
print(f"OK: {sum(recorder.validated.values())} responses validated against the official schema")

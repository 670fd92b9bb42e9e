"""A Gcore user's volumes with the real `gcore` SDK (`client.cloud.volumes`), never touching the native API to
make them: create and poll, get, list with filters, attach to an instance made through Gcore and poll,
extend while attached, refusals (delete while attached, shrink, detach from another instance, the quota),
detach and poll, update name and tags, an instance created with it and a new volume and deleted with the
new one, delete and poll; a volume made from an image that an instance boots from. Strict response
validation is on, and raw responses carry exactly the keys of the SDK's Volume model."""

from gcore import BadRequestError, NotFoundError
from gcore.types.cloud import Volume

from common import PROJECT, WHO, client, error_body, exact, native

gc = client()
vols = gc.cloud.volumes
inst = gc.cloud.instances
image = next(i for i in inst.images.list().results if i.name == "busybox")
VOLUMES = [{"source": "image", "image_id": image.id, "size": 10, "boot_index": 0}]
EXTERNAL = [{"type": "external"}]

v = vols.create_and_poll(source="new-volume", name="data", size=2, tags={"env": "prod"})
assert (v.name, v.size, v.status, v.volume_type) == ("data", 2, "available", "standard"), v
assert {t.key: t.value for t in v.tags} == {"env": "prod"}, v.tags
assert v.project_id == PROJECT and not v.attachments, v
exact(Volume, vols.with_raw_response.get(v.id).http_response.json(), "volume")
assert [x.id for x in vols.list().results] == [v.id]
for raw in vols.with_raw_response.list().http_response.json()["results"]:
    exact(Volume, raw, "listed volume")
assert native("GET", f"/v1/volumes/{v.id}")["size_gb"] == 2, "the core's volume"

vm = inst.create_and_poll(name="vol-vm", flavor="standard.small", interfaces=EXTERNAL, volumes=VOLUMES)
other = inst.create_and_poll(name="vol-other", flavor="standard.small", interfaces=EXTERNAL, volumes=VOLUMES)
vols.attach_to_instance_and_poll(v.id, instance_id=vm.id)
attached = vols.get(v.id)
assert attached.status == "in-use", attached
[a] = attached.attachments
assert (a.server_id, a.instance_name, a.volume_id) == (vm.id, "vol-vm", v.id), a
assert [x.id for x in vols.list(instance_id=vm.id).results] == [v.id]
assert vols.list(has_attachments=False).results == []

# Grown under its instance.
vols.resize_and_poll(v.id, size=4)
assert vols.get(v.id).size == 4

for what, call in [
    ("delete while attached", lambda: vols.delete(v.id)),
    ("detach from another instance", lambda: vols.detach_from_instance(v.id, instance_id=other.id)),
    ("shrink", lambda: vols.resize(v.id, size=1)),
]:
    try:
        call()
        raise AssertionError(f"{what} was accepted")
    except BadRequestError as e:
        error_body(e)

vols.detach_from_instance_and_poll(v.id, instance_id=vm.id)
detached = vols.get(v.id)
assert (detached.status, detached.attachments) == ("available", []), detached
renamed = vols.update(v.id, name="archive", tags={"env": None, "tier": "cold"})
assert renamed.name == "archive" and {t.key: t.value for t in renamed.tags} == {"tier": "cold"}, renamed

# An instance made with the detached volume and a new one, then deleted with the new one only: the
# existing volume is detached and kept.
multi = inst.create_and_poll(
    name="vol-multi",
    flavor="standard.small",
    interfaces=EXTERNAL,
    volumes=VOLUMES
    + [
        {"source": "existing-volume", "volume_id": v.id, "boot_index": -1},
        {"source": "new-volume", "size": 1, "name": "scratch", "type_name": "standard"},
    ],
)
ids = [x.id for x in multi.volumes]
assert v.id in ids and len(ids) == 3, multi.volumes
[scratch] = [x for x in vols.list(instance_id=multi.id).results if x.id != v.id]
assert (scratch.name, scratch.status, scratch.size) == ("scratch", "in-use", 1), scratch
assert vols.get(v.id).status == "in-use"
try:
    inst.create(name="x", flavor="standard.small", interfaces=EXTERNAL,
                volumes=VOLUMES + [{"source": "existing-volume", "volume_id": v.id}])
    raise AssertionError("a volume in use was given to a second instance")
except BadRequestError as e:
    error_body(e)
inst.delete_and_poll(multi.id, volumes=scratch.id)
try:
    vols.get(scratch.id)
    raise AssertionError("the volume deleted with its instance is still there")
except NotFoundError:
    pass
kept = vols.get(v.id)
assert (kept.status, kept.attachments) == ("available", []), kept

# The volume quota, set by the operator, holds through Gcore too.
quota = {"instances": 100, "vcpus": 1000, "memory_mib": 10000000, "disk_gb": 100000, "volume_gb": 5}
native("PUT", f"/v1/projects/{WHO['project']['id']}/quota", json=quota)
try:
    vols.create(source="new-volume", name="big", size=2)
    raise AssertionError("a volume past the quota was made")
except BadRequestError as e:
    assert error_body(e)["exception_class"] == "QuotaLimitExceed", e.body

vols.delete_and_poll(v.id)
try:
    vols.get(v.id)
    raise AssertionError("a deleted volume is still there")
except NotFoundError:
    pass
inst.delete_and_poll(vm.id)
inst.delete_and_poll(other.id)

# A volume made from an image boots an instance (the Terraform provider's way): `existing-volume` with
# `boot_index` 0; kept when the instance goes, bootable.
boot = vols.create_and_poll(source="image", image_id=image.id, name="root", size=2)
exact(Volume, vols.with_raw_response.get(boot.id).http_response.json(), "image volume")
assert (boot.bootable, boot.status, boot.size) == (True, "available", 2), boot
booted = inst.create_and_poll(name="from-root", flavor="standard.small", interfaces=EXTERNAL,
                              volumes=[{"source": "existing-volume", "volume_id": boot.id, "boot_index": 0}])
assert booted.status == "ACTIVE" and [x.id for x in booted.volumes] == [boot.id], booted
inst.delete_and_poll(booted.id)
assert vols.get(boot.id).status == "available"
vols.delete_and_poll(boot.id)
print("gcore volumes: ok")

"""OCI spec generation: what runc is asked to run for a system container."""

from __future__ import annotations

import pytest

from agent.runtime import runc
from agent.runtime.oci import DEFAULT_CAPS, ContainerSpec, Resources, build_spec


def _spec(**kw: object) -> dict[str, object]:
    base = dict(ctid=101, rootfs="/var/lib/vz/root/101", hostname="web1",
                netns_path="/run/netns/vz-n1-101", cgroups_path="/vzfleet/n1/101")
    base.update(kw)
    return build_spec(ContainerSpec(**base))  # type: ignore[arg-type]


def test_system_container_runs_the_template_init_as_pid_1() -> None:
    spec = _spec(init=("/sbin/init",))
    assert spec["process"]["args"] == ["/sbin/init"]  # type: ignore[index]
    assert spec["hostname"] == "web1"
    assert spec["root"] == {"path": "/var/lib/vz/root/101", "readonly": False}


def test_joins_the_agent_owned_network_namespace_and_owns_the_others() -> None:
    ns = _spec()["linux"]["namespaces"]  # type: ignore[index]
    by_type = {n["type"]: n for n in ns}
    assert by_type["network"] == {"type": "network", "path": "/run/netns/vz-n1-101"}
    for t in ("pid", "mount", "uts", "ipc"):
        assert by_type[t] == {"type": t}
    assert "user" not in by_type


def test_no_rlimits_because_the_agent_may_lack_cap_sys_resource() -> None:
    assert "rlimits" not in _spec()["process"]  # type: ignore[operator]


def test_capabilities_are_the_same_in_every_set_and_exclude_sys_admin() -> None:
    caps = _spec()["process"]["capabilities"]  # type: ignore[index]
    assert caps["bounding"] == caps["effective"] == caps["permitted"] == sorted(DEFAULT_CAPS)
    assert "CAP_SYS_ADMIN" not in caps["bounding"]
    assert caps["ambient"] == []


def test_resources_map_to_oci_fields_and_devices_are_denied_by_default() -> None:
    res = Resources(memory_bytes=64 << 20, memory_swap_bytes=128 << 20, cpu_shares=3072,
                    cpu_quota_us=25_000, pids_limit=64).to_oci()
    assert res["devices"] == [{"allow": False, "access": "rwm"}]
    assert res["memory"] == {"limit": 64 << 20, "swap": 128 << 20}
    assert res["cpu"] == {"shares": 3072, "quota": 25_000, "period": 100_000}
    assert res["pids"] == {"limit": 64}


def test_unlimited_resources_emit_nothing_but_the_device_rule() -> None:
    assert Resources().to_oci() == {"devices": [{"allow": False, "access": "rwm"}]}


def test_spec_is_deterministic() -> None:
    assert _spec() == _spec()


@pytest.mark.parametrize(("argv", "expected"), [
    (["runc", "--root", "/run/x", "list", "--format", "json"], "list"),
    (["runc", "--root", "/run/x", "--log", "/l", "--log-format", "json", "state", "101"], "state"),
    (["runc", "--debug", "exec", "-t", "101", "ps"], "exec"),
    (["runc", "--root", "/run/x"], None),
    (["runc"], None),
])
def test_runc_subcommand_skips_global_options(argv: list[str], expected: str | None) -> None:
    assert runc.subcommand(argv) == expected

"""The multi-host test bed itself (tests/hosts/testbed.py): real systemd hosts over ssh, and a teardown
that leaves nothing behind — also after a run whose supervisors were killed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.multihost

REPO = Path(__file__).resolve().parents[2]


def _load_fixtures():
    name = "pyhoptcluster_testbed_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "hosts" / "fixtures.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_fx = _load_fixtures()
tb_mod = _fx.testbed
testbed_hosts = _fx.testbed_hosts  # the session fixture (3 hosts)

# Tests that bring up their own test bed use a name and subnet of their own.
OWN_NAME, OWN_SUBNET = "pytd", "10.231.2"


def _ansible() -> str:
    exe = Path(sys.executable).parent / "ansible"
    found = str(exe) if exe.exists() else shutil.which("ansible")
    if not found:
        pytest.fail("ansible not found next to this Python or on PATH (ansible-core is a dependency)")
    return found


def _testbed_pids(tb) -> dict[int, int | None]:
    """Every process of a test bed (supervisors, nspawn, the hosts' own) with its start time."""
    pids = set()
    for hier in tb_mod._cgroup_hierarchies():
        pids |= tb_mod._cgroup_pids(hier / tb._cgroup())
    info = tb.info()
    pids |= {h.supervisor_pid for h in info.hosts} if info else set()
    return {pid: tb_mod._proc_start_time(pid) for pid in pids}


def _leftovers(tb, pids: dict[int, int | None], machines: list[str]) -> list[str]:
    found = [f"mount {m}" for m in tb_mod._mounts_under(tb.dir)]
    found += [f"bridge {tb.bridge}"] if Path("/sys/class/net", tb.bridge).exists() else []
    found += [f"veth vb-{m}" for m in machines if Path("/sys/class/net", f"vb-{m}").exists()]
    for hier in tb_mod._cgroup_hierarchies():
        if (hier / tb._cgroup()).exists():
            found.append(f"cgroup {hier / tb._cgroup()}")
    found += [f"process {pid}" for pid, start in pids.items() if tb_mod._alive(pid, start)]
    state = (tb.state_file, tb.inventory_path, tb.dir / "hosts")
    found += [f"state {p}" for p in state if p.exists()]
    return found


@pytest.fixture
def own_testbed():
    """A Testbed object of its own (not started); always torn down afterwards."""
    tb = tb_mod.Testbed(OWN_NAME, 2, OWN_SUBNET)
    try:
        yield tb
    finally:
        tb.down()


# --- the session's 3 hosts -------------------------------------------------------------------------


def test_every_host_answers_ssh_as_root_with_its_own_hostname(testbed_hosts):
    assert len(testbed_hosts.hosts) == 3
    for host in testbed_hosts.hosts:
        p = testbed_hosts.ssh(host, "id -un; hostname")
        assert p.returncode == 0, p.stderr
        assert p.stdout.split() == ["root", host.name]


def test_systemd_is_pid1_and_the_system_is_running(testbed_hosts):
    for host in testbed_hosts.hosts:
        p = testbed_hosts.ssh(host, "ps -p 1 -o comm=; systemctl is-system-running --wait")
        lines = p.stdout.split()
        assert lines[0] == "systemd"
        assert lines[1] in ("running", "degraded"), p.stdout


def test_each_host_has_its_static_address_and_no_default_route(testbed_hosts):
    for host in testbed_hosts.hosts:
        p = testbed_hosts.ssh(
            host,
            "ip -4 -o addr show dev host0; echo ROUTES; ip route show default; ip -6 route show default",
        )
        addr, routes = p.stdout.split("ROUTES")
        assert f" {host.ip}/24 " in addr
        assert routes.strip() == "", f"{host.name} has a default route: {routes}"


def test_machine_ids_and_ssh_host_keys_differ_between_hosts(testbed_hosts):
    cmd = "cat /etc/machine-id; cat /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2"
    seen = [tuple(testbed_hosts.ssh(h, cmd).stdout.split()) for h in testbed_hosts.hosts]
    assert all(len(s) == 2 for s in seen)
    assert len({s[0] for s in seen}) == 3
    assert len({s[1] for s in seen}) == 3


def test_hosts_reach_each_other_and_the_control_node_on_the_bridge(testbed_hosts):
    first, second = testbed_hosts.hosts[:2]
    with socket.create_server((testbed_hosts.bridge_ip, 0)) as server:
        port = server.getsockname()[1]
        targets = [f"{second.ip}/22", f"{testbed_hosts.bridge_ip}/{port}"]
        probe = " && ".join(f"timeout 5 bash -c '</dev/tcp/{t}'" for t in targets)
        p = testbed_hosts.ssh(first, probe)
    assert p.returncode == 0, p.stderr


def test_transient_unit_runs_under_the_hosts_systemd(testbed_hosts):
    host = testbed_hosts.hosts[0]
    p = testbed_hosts.ssh(
        host,
        "systemd-run --unit testbed-probe sleep 100 && systemctl is-active testbed-probe",
    )
    try:
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "active"
    finally:
        testbed_hosts.ssh(host, "systemctl stop testbed-probe")


def test_inventory_lists_workers_by_ip_and_the_control_node_as_local_master(testbed_hosts):
    inv = yaml.safe_load(testbed_hosts.inventory_path.read_text())["all"]
    workers = inv["children"]["hyperopt_workers"]
    assert list(workers["hosts"]) == testbed_hosts.ips
    assert workers["vars"]["ansible_user"] == "root"
    assert workers["vars"]["ansible_ssh_private_key_file"] == str(testbed_hosts.key_path)
    assert workers["vars"]["ansible_python_interpreter"] == "/usr/bin/python3"
    assert "StrictHostKeyChecking=no" in workers["vars"]["ansible_ssh_common_args"]
    master = inv["children"]["hyperopt_master"]["hosts"]["localhost"]
    assert master["ansible_connection"] == "local"
    assert master["ansible_python_interpreter"] == "{{ ansible_playbook_python }}"
    assert inv["vars"]["hyperopt_mongodb_bind_addresses"] == [testbed_hosts.bridge_ip]
    assert inv["vars"]["hyperopt_worker_wheelhouse"]  # the hosts have no index: install from a wheelhouse


def test_ansible_ping_reaches_every_host_in_the_inventory(testbed_hosts):
    p = subprocess.run(
        [_ansible(), "all", "-i", str(testbed_hosts.inventory_path), "-m", "ansible.builtin.ping"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    for name in ["localhost", *testbed_hosts.ips]:
        assert f"{name} | SUCCESS" in p.stdout


def test_second_up_of_a_healthy_testbed_changes_nothing(testbed_hosts):
    before = [(h.supervisor_pid, h.supervisor_start) for h in testbed_hosts.hosts]
    tb = tb_mod.Testbed(testbed_hosts.name, len(testbed_hosts.hosts), testbed_hosts.subnet)
    again = tb.up(timeout=60)
    assert [(h.supervisor_pid, h.supervisor_start) for h in again.hosts] == before


def test_reboot_inside_a_host_brings_it_back_under_the_same_supervisor(testbed_hosts):
    host = testbed_hosts.hosts[-1]
    log = testbed_hosts.state_dir / "logs" / f"{host.name}.log"
    reboots_before = log.read_text().count("rebooted (exit 133)")
    testbed_hosts.ssh(host, "systemctl reboot", timeout=30)  # the connection may drop: result ignored
    deadline = time.monotonic() + 60
    while log.read_text().count("rebooted (exit 133)") == reboots_before:
        assert time.monotonic() < deadline, f"{host.name} did not reboot:\n{log.read_text()[-2000:]}"
        time.sleep(0.2)
    while True:
        p = testbed_hosts.ssh(host, "systemctl is-system-running --wait", timeout=30)
        if p.stdout.strip() in ("running", "degraded"):
            break
        assert time.monotonic() < deadline, f"{host.name} did not come back: {p.stdout} {p.stderr}"
        time.sleep(0.2)
    assert host.alive  # the same supervisor restarted nspawn


def test_frozen_host_stops_answering_until_thawed_and_goes_on_where_it_stopped(testbed_hosts):
    host = testbed_hosts.hosts[-1]
    tb = tb_mod.Testbed(testbed_hosts.name, len(testbed_hosts.hosts), testbed_hosts.subnet)
    probe = "systemctl is-system-running; systemctl show -p MainPID --value ssh"
    sshd_before = testbed_hosts.ssh(host, probe).stdout.split()[1]
    tb.freeze(host.name)
    try:
        assert tb.frozen(host.name) and tb.status()["hosts"][-1]["frozen"]
        frozen = testbed_hosts.ssh(host, "true", timeout=30)  # the kernel accepts, sshd never greets
        assert frozen.returncode == 255 and "timed out" in frozen.stderr, frozen
    finally:
        tb.thaw(host.ip)
    assert not tb.frozen(host.name)
    state, sshd = testbed_hosts.ssh(host, probe, timeout=30).stdout.split()
    assert state in ("running", "degraded") and sshd == sshd_before  # the same sshd: it went on


# --- test beds of their own ----------------------------------------------------------------------


def test_down_leaves_no_mounts_bridge_cgroups_or_processes(own_testbed):
    info = own_testbed.up(timeout=120)
    pids = _testbed_pids(own_testbed)
    machines = [h.name for h in info.hosts]
    assert len(pids) > 2 * len(machines)  # supervisors, nspawns and the hosts' own processes
    own_testbed.down()
    assert _leftovers(own_testbed, pids, machines) == []
    own_testbed.down()  # idempotent: nothing to do, no error


def test_up_recovers_after_supervisors_were_killed(own_testbed):
    info = own_testbed.up(timeout=120)
    for h in info.hosts:
        os.kill(h.supervisor_pid, signal.SIGKILL)  # a run that died halfway: nspawn and hosts orphaned
    orphans = _testbed_pids(own_testbed)
    again = own_testbed.up(timeout=120)
    assert [h.supervisor_pid for h in again.hosts] != [h.supervisor_pid for h in info.hosts]
    assert not any(tb_mod._alive(pid, start) for pid, start in orphans.items())
    for h in again.hosts:
        assert again.ssh(h, "hostname").stdout.strip() == h.name
    own_testbed.down()
    assert _leftovers(own_testbed, {}, [h.name for h in again.hosts]) == []


def test_host_that_never_answers_is_named_in_the_error_and_nothing_is_left(own_testbed):
    with pytest.raises(tb_mod.TestbedError, match=rf"host {OWN_NAME}-1 \({OWN_SUBNET}\.11\) never came up"):
        own_testbed.up(timeout=0.01)
    assert _leftovers(own_testbed, {}, [f"{OWN_NAME}-1", f"{OWN_NAME}-2"]) == []


HOLDER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("tb_holder", sys.argv[1])
tb_mod = importlib.util.module_from_spec(spec)
sys.modules["tb_holder"] = tb_mod
spec.loader.exec_module(tb_mod)
tb = tb_mod.Testbed(sys.argv[2], 1, sys.argv[3])
tb.up(timeout=120)
print("ready", flush=True)
sys.stdin.read()  # hold the test bed until stdin closes
tb.down()
"""


def test_a_testbed_held_by_another_live_process_is_not_torn_down_under_it(own_testbed):
    # two test runs on one machine with the same test bed name: the second must not take the first's
    # hosts away mid-test (it did, before test beds had an owner)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(REPO / "tests/hosts/testbed.py"), OWN_NAME, OWN_SUBNET],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        info = own_testbed.info()
        assert info.owner_pid == holder.pid
        with pytest.raises(tb_mod.TestbedError, match=rf"in use by pid {holder.pid} .*another test bed name"):
            tb_mod.Testbed(OWN_NAME, 1, OWN_SUBNET).up(timeout=60, recreate=True)
        with pytest.raises(tb_mod.TestbedError, match=rf"in use by pid {holder.pid}"):
            own_testbed.down()
        assert info.hosts[0].alive and info.ssh(info.hosts[0], "hostname").stdout.strip() == f"{OWN_NAME}-1"
        # a plain `up` of the same shape shares the healthy test bed instead of replacing it
        shared = tb_mod.Testbed(OWN_NAME, 1, OWN_SUBNET).up(timeout=60)
        assert [h.supervisor_pid for h in shared.hosts] == [h.supervisor_pid for h in info.hosts]
        holder.stdin.close()
        assert holder.wait(timeout=90) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert _leftovers(own_testbed, {}, [f"{OWN_NAME}-1"]) == []

"""The lab's topology, inventory rendering and secrets file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from labkit import layout, secrets, topology
from labkit.shell import LabError, run

TOPOLOGY = ROOT / "inventories" / "lab" / "topology.yml"


def test_instance_zero_and_instance_three_do_not_collide():
    zero, three = topology.load(TOPOLOGY, 0), topology.load(TOPOLOGY, 3)
    assert zero.network.subnet == "172.31.240.0/24" and three.network.subnet == "172.31.243.0/24"
    assert zero.container("edge1") == "llmlab-edge1" and three.container("edge1") == "llmlab3-edge1"
    assert {h.address for h in zero.hosts}.isdisjoint({h.address for h in three.hosts})


def test_inventory_has_one_zone_per_host_and_container_hosts():
    inv = topology.inventory(topology.load(TOPOLOGY, 0))["all"]
    children = inv["children"]
    zones = ("dmz", "app", "data")
    for host in ("edge1", "gpu1", "gpu2", "ops1"):
        assert sum(host in children[z]["hosts"] for z in zones) == 1
    assert children["container_hosts"]["children"] == {"gpu_nodes": None, "ops": None}
    assert inv["vars"]["lab_network"]["gateway"] == "172.31.240.1"
    assert inv["vars"]["lab_addresses"]["ops1"] == "172.31.240.31"


def test_container_hosts_are_derived_from_groups():
    topo = topology.load(TOPOLOGY, 0)
    assert {h.name for h in topo.hosts if h.runs_containers} == {"gpu1", "gpu2", "ops1"}


def test_bad_instance_number(monkeypatch):
    monkeypatch.setenv("LLMLAB_INSTANCE", "99")
    with pytest.raises(LabError, match="0 to 15"):
        topology.instance_number()


def test_secrets_are_generated_once_and_kept(tmp_path, monkeypatch):
    vault = str(Path(sys.executable).parent / "ansible-vault")
    monkeypatch.setattr(secrets, "SECRET_SPECS", {"one": lambda: "first", "two": lambda: "second"})
    secrets.ensure_secrets(tmp_path / "pass", tmp_path / "s.yml", ansible_vault=vault)
    assert (tmp_path / "s.yml").read_text().startswith("$ANSIBLE_VAULT")
    monkeypatch.setattr(secrets, "SECRET_SPECS", {"one": lambda: "changed", "three": lambda: "third"})
    secrets.ensure_secrets(tmp_path / "pass", tmp_path / "s.yml", ansible_vault=vault)
    plain = run([vault, "view", "--vault-password-file", str(tmp_path / "pass"), str(tmp_path / "s.yml")]).stdout
    assert yaml.safe_load(plain)["cluster_secrets"] == {"one": "first", "two": "second", "three": "third"}


def test_lab_and_molecule_make_hosts_from_one_systemd_recipe():
    """The lab's `docker run` options and molecule's create.yml both come from systemd-host.yml."""
    recipe = yaml.safe_load(layout.SYSTEMD_HOST_RECIPE.read_text())
    argv = layout.systemd_run_args()
    pairs = set(zip(argv[::2], argv[1::2], strict=True))
    assert {("--cap-add", c) for c in recipe["capabilities"]} <= pairs
    assert ("--cgroupns", "host") in pairs
    assert {("--tmpfs", t) for t in recipe["tmpfs"]} | {("--volume", v) for v in recipe["volumes"]} <= pairs
    assert "--privileged" not in argv  # runc refuses it without CAP_SYS_RESOURCE
    create = (ROOT / "molecule" / "shared" / "create.yml").read_text()
    assert "scripts/labkit/systemd-host.yml" in create
    assert "SYS_ADMIN" not in create  # no second copy of the recipe

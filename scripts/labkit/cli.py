"""`scripts/lab`: bring the local lab up or down, build its images, show its state.

The lab is a small site of systemd containers on a private Docker network, one or more
hosts per zone, reached over real SSH with a key the lab generates. Its hosts come from
`inventories/lab/hosts.yml`; `make lab` then runs `playbooks/site.yml` against it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from . import engine, images, layout, progress, secrets, summary, topology, vault
from .shell import LabError, ok, run

ROOT = layout.ROOT
STATE = layout.STATE
INVENTORY = layout.INVENTORY
TOPOLOGY = INVENTORY / "topology.yml"
HOSTS_FILE = INVENTORY / "hosts.yml"
# The sudo user baked into the base image (scripts/labkit/images/debian12-systemd).
ADMIN_USER = "labadmin"
SSH_KEY = layout.SSH_KEY
KNOWN_HOSTS = layout.KNOWN_HOSTS
VAULT_PASS = layout.VAULT_PASS
SECRETS_FILE = INVENTORY / "group_vars" / "all" / "secrets.vault.yml"
BASE_RECIPE = "debian12-systemd"
LABEL = "org.llmlab.lab"

# What systemd as PID 1 needs in a container (scripts/labkit/systemd-host.yml).
SYSTEMD_RUN_ARGS = layout.systemd_run_args()


def ssh_base(address: str, user: str) -> list[str]:
    return [
        "ssh",
        "-i",
        str(SSH_KEY),
        "-o",
        f"UserKnownHostsFile={KNOWN_HOSTS}",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        f"{user}@{address}",
    ]


def ensure_ssh_key() -> str:
    if not SSH_KEY.exists():
        SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "llmlab-admin", "-f", str(SSH_KEY)])
    return SSH_KEY.with_suffix(".pub").read_text().strip()


def ensure_network(net: topology.LabNetwork, instance: int) -> None:
    proc = run(
        ["docker", "network", "inspect", "--format", "{{ range .IPAM.Config }}{{ .Subnet }}{{ end }}", net.name],
        check=False,
    )
    if proc.returncode == 0:
        if proc.stdout.strip() != net.subnet:
            raise LabError(
                f"docker network {net.name} exists with subnet {proc.stdout.strip()}, the lab "
                f"inventory says {net.subnet}: run `scripts/lab down` first"
            )
        return
    run(
        [
            "docker",
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            net.subnet,
            "--gateway",
            net.gateway,
            "--label",
            f"{LABEL}={instance}",
            net.name,
        ]
    )


def container_state(name: str) -> tuple[str, str] | None:
    """(status, image id) of a container, or None when it does not exist."""
    proc = run(["docker", "inspect", "--format", "{{ .State.Status }} {{ .Image }}", name], check=False)
    if proc.returncode != 0:
        return None
    status, image = proc.stdout.split()
    return status, image


def image_id(tag: str) -> str:
    return run(["docker", "image", "inspect", "--format", "{{ .Id }}", tag]).stdout.strip()


def ensure_host(host: topology.LabHost, topo: topology.Topology, tag: str) -> str:
    name = topo.container(host.name)
    net = topo.network
    state = container_state(name)
    if state and state[1] != image_id(tag):
        progress.warn(f"{host.name}: base image changed, recreating the container (its state is lost)")
        run(["docker", "rm", "-f", name])
        state = None
    if state and state[0] == "running":
        return "kept"
    if state:
        run(["docker", "start", name])
        return "started"
    argv = [
        "docker",
        "run",
        "--detach",
        "--name",
        name,
        "--hostname",
        host.name,
        "--label",
        f"{LABEL}={topo.instance}",
        "--network",
        net.name,
        "--ip",
        host.address,
        "--network-alias",
        host.name,
        *SYSTEMD_RUN_ARGS,
    ]
    if host.runs_containers:
        argv += ["--volume", f"{name}-docker:/var/lib/docker"]
    run([*argv, tag])
    return "created"


def wait_systemd(name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        proc = run(["docker", "exec", name, "systemctl", "is-system-running"], check=False)
        state = proc.stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(1)
    raise LabError(f"{name}: systemd did not finish booting within {timeout:.0f}s (state: {state or 'unknown'})")


def authorize_key(name: str, user: str, pubkey: str) -> None:
    """Put the lab key in the admin user's authorized_keys unless it is already there."""
    script = (
        'set -e; h=$(getent passwd "$1" | cut -d: -f6); install -d -m 700 -o "$1" -g "$1" "$h/.ssh"; '
        'f="$h/.ssh/authorized_keys"; touch "$f"; chown "$1:$1" "$f"; chmod 600 "$f"; '
        'grep -qxF "$2" "$f" || echo "$2" >> "$f"'
    )
    run(["docker", "exec", name, "sh", "-c", script, "sh", user, pubkey])


def wait_ssh(address: str, user: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok([*ssh_base(address, user), "true"], timeout=15):
            return
        time.sleep(1)
    raise LabError(f"no SSH login to {user}@{address} within {timeout:.0f}s")


def build_test_double_images() -> None:
    """Run every tests/doubles/*/build-images (each caches its own output by content hash)."""
    for script in sorted((ROOT / "tests" / "doubles").glob("*/build-images")):
        with progress.step(f"test double images: {script.relative_to(ROOT)}"):
            run([sys.executable, str(script)], timeout=900)


def cmd_up(args: argparse.Namespace) -> None:
    engine.ensure_engine(STATE)
    tag = images.ensure_image(BASE_RECIPE, force=args.rebuild_image)
    build_test_double_images()
    topo = topology.load(TOPOLOGY)
    if topology.write_inventory(topo, HOSTS_FILE):
        progress.info(f"wrote {HOSTS_FILE.relative_to(ROOT)} (lab instance {topo.instance})")
    secrets.ensure_secrets(VAULT_PASS, SECRETS_FILE)
    started = start_hosts(topo, tag)
    vault.prepare(topo, started)
    print_hosts(topo)


def start_hosts(topo: topology.Topology, tag: str) -> dict[str, str]:
    """The topology's network and hosts, each with systemd up and SSH as the admin user
    working; what was done to each host (created, started, kept)."""
    pubkey = ensure_ssh_key()
    done = {}
    with progress.step(f"network {topo.network.name} ({topo.network.subnet})"):
        ensure_network(topo.network, topo.instance)
    for host in topo.hosts:
        with progress.step(f"host {host.name} ({host.zone} zone, {host.address})"):
            what = ensure_host(host, topo, tag)
            wait_systemd(topo.container(host.name))
            authorize_key(topo.container(host.name), ADMIN_USER, pubkey)
            wait_ssh(host.address, ADMIN_USER)
            progress.info(f"{host.name}: {what}, systemd up, SSH as {ADMIN_USER} works")
            done[host.name] = what
    return done


def print_hosts(topo: topology.Topology) -> None:
    print(f"\nLab {topo.instance}: network {topo.network.name} {topo.network.subnet}; SSH key {SSH_KEY}")
    print(f"{'host':8} {'zone':6} {'address':16} groups")
    for h in topo.hosts:
        print(f"{h.name:8} {h.zone:6} {h.address:16} {','.join(h.groups)}")
    print(f"\nexport ANSIBLE_VAULT_PASSWORD_FILE={VAULT_PASS}")
    print("ansible-playbook playbooks/site.yml -i inventories/lab")


def cmd_down(_: argparse.Namespace) -> None:
    topo = topology.load(TOPOLOGY)
    if not engine.engine_answers():
        progress.info("no Docker engine answers: nothing to remove")
        return
    remove_hosts(topo)
    vault.forget()
    KNOWN_HOSTS.unlink(missing_ok=True)
    HOSTS_FILE.unlink(missing_ok=True)
    shutil.rmtree(layout.FACT_CACHE, ignore_errors=True)


def remove_hosts(topo: topology.Topology) -> None:
    """Every container, Docker volume and network of the topology's lab instance."""
    label = f"label={LABEL}={topo.instance}"
    with progress.step(f"removing lab {topo.instance}: containers, volumes and network"):
        ids = run(["docker", "ps", "-aq", "--filter", label]).stdout.split()
        if ids:
            run(["docker", "rm", "-f", "-v", *ids])
        vols = [v for v in run(["docker", "volume", "ls", "-q"]).stdout.split() if v.startswith(topo.container_prefix)]
        if vols:
            run(["docker", "volume", "rm", "-f", *vols])
        nets = run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split()
        if nets:
            run(["docker", "network", "rm", *nets])


def cmd_summary(_: argparse.Namespace) -> None:
    """Where things are on the converged lab, and a request that works."""
    topo = topology.load(TOPOLOGY)
    print_hosts(topo)
    summary.show(topo, INVENTORY, VAULT_PASS, SECRETS_FILE)


def cmd_vault(_: argparse.Namespace) -> None:
    """After the first converge: the lab's Vault unsealed, bootstrapped and holding its secrets."""
    vault.hand_over(topology.load(TOPOLOGY))


def cmd_drill(_: argparse.Namespace) -> None:
    """The restore drill, Vault's snapshot included (the TEST keyholder gives the shares)."""
    vault.drill()


def cmd_status(_: argparse.Namespace) -> None:
    topo = topology.load(TOPOLOGY)
    up = engine.engine_answers()
    for h in topo.hosts:
        state = container_state(topo.container(h.name)) if up else None
        print(f"{h.name:8} {h.zone:6} {h.address:16} {state[0] if state else 'absent'}")


def cmd_image(args: argparse.Namespace) -> None:
    engine.ensure_engine(STATE)
    for name in args.recipes or [BASE_RECIPE]:
        images.ensure_image(name, force=args.force)
    if not args.recipes:
        build_test_double_images()


def cmd_engine(_: argparse.Namespace) -> None:
    engine.ensure_engine(STATE)
    progress.info("Docker engine answers")


def cmd_ssh(args: argparse.Namespace) -> None:
    topo = topology.load(TOPOLOGY)
    hosts = {h.name: h for h in topo.hosts}
    if args.host not in hosts:
        raise LabError(f"no lab host {args.host} (hosts: {', '.join(hosts)})")
    argv = [*ssh_base(hosts[args.host].address, ADMIN_USER), *args.command]
    os.execvp(argv[0], argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the Docker engine, build images, start the lab hosts")
    up.add_argument("--rebuild-image", action="store_true", help="rebuild the base image even if current")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="remove every container, volume and network the lab created")
    down.set_defaults(func=cmd_down)
    sub.add_parser("status", help="show the lab hosts and their container state").set_defaults(func=cmd_status)
    summary = sub.add_parser("summary", help="show where the lab's services are, after `make lab`")
    summary.set_defaults(func=cmd_summary)
    hand = sub.add_parser(
        "vault", help="after the first converge: unseal and bootstrap the lab's Vault, move the secrets into it"
    )
    hand.set_defaults(func=cmd_vault)
    sub.add_parser(
        "drill", help="the restore drill (playbooks/restore-drill.yml) with the lab keyholder's Vault shares"
    ).set_defaults(func=cmd_drill)
    img = sub.add_parser("image", help="build lab images (cached by recipe hash)")
    img.add_argument("recipes", nargs="*", help=f"recipe names under scripts/labkit/images (default: {BASE_RECIPE})")
    img.add_argument("--force", action="store_true", help="rebuild even if the image is current")
    img.set_defaults(func=cmd_image)
    eng = sub.add_parser("engine", help="make sure a Docker engine answers (start one if needed)")
    eng.set_defaults(func=cmd_engine)
    ssh = sub.add_parser("ssh", help="open an SSH session to a lab host as the admin user")
    ssh.add_argument("host")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    ssh.set_defaults(func=cmd_ssh)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

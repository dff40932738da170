"""The documented path to real hosts, on the lab's hosts: a site copied from
inventories/example as the README says (tests/helpers/example_site.py), a converge with
failed=0, and a chat completion through its edge with its own client key. Check mode is the
lab's own first test (test_00_site.py, on fresh hosts); a second check here, on hosts the lab
had already converged, cost CI three to four minutes for little more.

The lab's containers are not HGX servers, so the run gets, as extra variables, the lab's
test doubles and nothing else (LAB_DOUBLES below, each with its reason): how Ansible reaches
the containers, the stand-in serving image from the lab's registry instead of NGC's, and no
Grafana (its apt repository cannot be reached here). The GPU roles skip the GPU-less
containers as they do in the lab. Runs after the drift test, as the last converge: it leaves
the lab configured as the example site.
"""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import INVENTORY, ROOT, VAULT_PASS, Lab
from labkit import pki
from labkit.layout import KNOWN_HOSTS, SSH_KEY, STATE
from toolkit.ansible_run import PlaybookRun, run_playbook

from tests.helpers import example_site
from tests.helpers.edge_client import EdgeClient

STANDIN_IMAGES = ROOT / ".cache" / "trtllm-standin" / "images.yml"


def _lab_doubles(lab: Lab) -> dict:
    """The lab's test doubles, as extra variables of the example site's runs."""
    serving = yaml.safe_load((INVENTORY / "group_vars" / "all" / "serving.yml").read_text())
    registry = f"{lab.address(lab.hosts('ops')[0])}:{{{{ cluster_services.image_registry.port }}}}"
    return serving | {
        # How the controller reaches the containers (the lab's administrator account and key).
        "ansible_user": "labadmin",
        "ansible_ssh_private_key_file": str(SSH_KEY),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={KNOWN_HOSTS} -o StrictHostKeyChecking=accept-new",
        # The serving stand-in (tests/doubles/trtllm-standin) from the lab's registry, on the
        # containers' CPUs, instead of NGC's image on eight GPUs: the lab's serving settings.
        "lab_standin_images": json.loads(STANDIN_IMAGES.read_text()),
        "cluster_image_registry": registry,
        "llm_serving_instances": [
            i | {"model_src": str(ROOT / "tests" / "doubles" / "trtllm-standin" / "model")}
            for i in serving["llm_serving_instances"]
        ],
        # Grafana's apt repository is out of this machine's reach (the lab runs without it too).
        "grafana_enabled": False,
    }


@pytest.fixture(scope="module")
def example(converged: Lab, tmp_path_factory) -> dict:
    """The site from the example, its converge run and its secrets."""
    tmp = tmp_path_factory.mktemp("example-site")
    by_zone = {zone: converged.hosts(zone) for zone in ("dmz", "app", "data")}
    addresses = {
        "edge01": converged.address(by_zone["dmz"][0]),
        "gpu01": converged.address(by_zone["app"][0]),
        "gpu02": converged.address(by_zone["app"][1]),
        "ops01": converged.address(by_zone["data"][0]),
    }
    lab_secrets = example_site.decrypt(INVENTORY / "group_vars" / "all" / "secrets.vault.yml", VAULT_PASS)
    site, vault_pass = example_site.copy_example(
        tmp,
        addresses,
        [f"{converged.topo.network.gateway}/32"],
        [{"name": "labadmin", "ssh_keys": [(STATE / "ssh" / "id_ed25519.pub").read_text().strip()]}],
        # The lab's hosts keep the CA made with the lab's passphrase: a new one would not open it.
        {"pki_ca_passphrase": lab_secrets["pki_ca_passphrase"]},
    )
    doubles = tmp / "lab-doubles.json"
    doubles.write_text(json.dumps(_lab_doubles(converged)))
    args = ("--vault-password-file", str(vault_pass), "-e", f"@{doubles}")
    site_yml = ROOT / "playbooks" / "site.yml"
    runs: dict[str, PlaybookRun] = {"converge": run_playbook(site_yml, site, *args)}
    return {"site": site, "runs": runs, "secrets": example_site.decrypt(site / "group_vars" / "all" /
                                                                         "secrets.vault.yml", vault_pass)}  # fmt: skip


def _ok(run: PlaybookRun) -> None:
    assert run.rc == 0 and run.total("failed") == 0, f"rc={run.rc} {run.failures()}\n{run.stderr[-2000:]}"
    assert run.total("unreachable") == 0


def test_the_example_site_converges(example: dict):
    _ok(example["runs"]["converge"])


def test_the_example_sites_client_key_gets_a_completion(example: dict, converged: Lab, tmp_path):
    assert example["runs"].get("converge") and example["runs"]["converge"].rc == 0
    edge = converged.hosts("edge")[0]
    ca = pki.fetch_ca(converged.topo, edge, tmp_path / "ca.crt")
    client = EdgeClient(converged.address(edge), "edge01", ca)
    key = example["secrets"]["edge_api_keys"]["my-first-client"]
    body = {"model": "standin-chat", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello."}]}
    answer = client.request("POST", "/v1/chat/completions", body, key=key)
    assert answer.status == 200, answer
    assert "[standin" in json.loads(answer.body)["choices"][0]["message"]["content"]

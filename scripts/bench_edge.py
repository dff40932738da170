#!/usr/bin/env python3
"""Measure what the edge proxy costs: the upstream directly, through the proxy with the WAF
off, with Debian's ModSecurity + CRS enabled as shipped, and with the role's WAF, in one run
at the same load.

    scripts/bench_edge.py [--output docs/benchmarks/edge-overhead.md] [--rounds 3]
                          [--duration 10] [--concurrency 32] [--keep] [--quick]
    scripts/bench_edge.py --chart-only   (the chart again, from the JSON beside the report)

One throw-away systemd container from the lab's base image holds everything, so all
traffic stays on its loopback and every configuration shares the same two CPU cores:
  * the backend: the trtllm-serve TEST DOUBLE (tests/doubles/trtllm-standin), answering a
    chat completion with one token and no delay, run by the same test fixture as the
    tests (serve-directly.yml);
  * the edge: playbooks/security/pki.yml (the certificate) and playbooks/edge.yml
    (edge_proxy) converged on it over the Docker connection, with limits raised out of
    the way;
  * the load: Debian's wrk, installed in the container, keep-alive connections, the same
    chat POST (a prompt with code in it) for every target.

The WAF is switched with the role's own `modsecurity on|off` line (what
edge_proxy_waf_enabled renders) and its `modsecurity_rules_file` line between measurements,
and the chat route's `js_content edge.completion` line (the request schema) with a plain
`proxy_pass` for the targets without the role's edge, so the targets are measured
interleaved, round after round, under the same conditions.
"WAF as shipped" is the reference configuration an operator gets by enabling what Debian
ships: /etc/nginx/modsecurity.conf with SecRuleEngine On, crs-setup.conf and every CRS rule
file, no exclusions. It answers 403 to prompts with code in them, so it is sent the same
request with a plain-text prompt of the same length. Besides wrk's latency and
rate, the nginx workers' CPU time per request is read from /proc: it shows the WAF's
cost even when other work on the machine disturbs latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit.layout import ROOT, systemd_run_args
from toolkit import charts

SYSTEMD_RUN_ARGS = systemd_run_args()

IMAGE = "local/llmlab-debian12:bookworm"
# A public key for preflight's administrator check; nothing logs in with it.
BENCH_SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBw/I6Cctv/B9P3JJYSawPlSi/edHCbmNaFGZHZW/oSk bench"
CONTAINER = "llmbench-edge"
CHAT_BODY = {
    # The name serve-directly.yml gives the stand-in's model, so the edge's schema accepts it.
    "model": "standin-llama-3.1-8b-instruct",
    "max_tokens": 1,
    "temperature": 0.2,
    "messages": [
        {"role": "system", "content": "You are a careful senior engineer."},
        {
            "role": "user",
            "content": "Why is this unsafe, and how do I fix it?\n"
            "rows = db.execute(f\"SELECT * FROM users WHERE name = '{name}'\")\n"
            "os.system('grep ' + name + ' /var/log/app.log')\n"
            "return f'<div>{name}</div><script>track()</script>'",
        },
    ],
}
PLAIN_PROMPT = "Please explain how to make this program faster, simpler and easier to read and test. "
PROXY = "https://127.0.0.1:443/v1/chat/completions"
# target: (URL, WAF mode, wrk script)
TARGETS = {
    "upstream directly": ("http://127.0.0.1:8000/v1/chat/completions", "off", "bench-post.lua"),
    "proxy, WAF off": (PROXY, "off", "bench-post.lua"),
    "proxy, WAF as shipped": (PROXY, "shipped", "bench-plain.lua"),
    "the role's edge": (PROXY, "role", "bench-post.lua"),
}
# Debian's configuration and CRS as shipped, SecRuleEngine On (libmodsecurity3 has no
# IncludeOptional, so the package's owasp-crs.load cannot be included as it is).
SHIPPED_WAF = """Include /etc/nginx/modsecurity.conf
SecRuleEngine On
Include /etc/modsecurity/crs/crs-setup.conf
Include /etc/modsecurity/crs/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf
Include /usr/share/modsecurity-crs/rules/*.conf
Include /etc/modsecurity/crs/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf
"""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    if check and proc.returncode != 0:
        raise SystemExit(
            f"`{' '.join(argv[:6])} ...` failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc


def sh(script: str, check: bool = True) -> str:
    return run(["docker", "exec", CONTAINER, "sh", "-c", script], check=check).stdout


@dataclass
class Sample:
    target: str
    concurrency: int
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    nginx_cpu_ms: float | None = None
    load: float = 0.0
    raw: str = field(default="", repr=False)


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def parse_wrk(out: str, sample: Sample) -> None:
    sample.raw = out
    sample.requests = int(re.search(r"(\d+) requests in", out).group(1))
    sample.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    sample.p50_ms = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    sample.p99_ms = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sample.errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)


NGINX_CPU = r"""
t=0; m=$(cat /run/nginx.pid)
for s in /proc/[0-9]*/stat; do
  set -- $(cat "$s" 2>/dev/null) ; [ "$4" = "$m" ] && t=$((t + ${14} + ${15}))
done; echo $t
"""


def measure(target: str, concurrency: int, duration: int, key: str) -> Sample:
    url, _, script = TARGETS[target]
    sample = Sample(target, concurrency, load=os.getloadavg()[0])
    threads = 1 if concurrency == 1 else 2
    before = int(sh(NGINX_CPU).strip() or 0)
    out = sh(f"wrk -t{threads} -c{concurrency} -d{duration}s --latency -s /root/{script} -H 'X-API-KEY: {key}' {url}")
    after = int(sh(NGINX_CPU).strip() or 0)
    parse_wrk(out, sample)
    if not url.startswith("http://127.0.0.1:8000") and sample.requests:
        ticks = os.sysconf("SC_CLK_TCK")
        sample.nginx_cpu_ms = (after - before) * 1000 / ticks / sample.requests
    return sample


def set_waf(mode: str) -> None:
    """off, shipped (Debian's configuration + CRS as shipped) or role (edge_proxy's).

    off and shipped proxy the completion routes directly, as an nginx without the role's
    request schema (edge.js) would; role is the role's edge as it converged."""
    on = "off" if mode == "off" else "on"
    rules = "/etc/nginx/modsec/shipped.conf" if mode == "shipped" else "/etc/nginx/modsec/edge.conf"
    content = "js_content edge.completion" if mode == "role" else "proxy_pass http://edge_llm_serving"
    sh(
        rf"sed -i -e 's/^    modsecurity \(on\|off\);$/    modsecurity {on};/'"
        rf" -e 's#^    modsecurity_rules_file .*;$#    modsecurity_rules_file {rules};#'"
        rf" -e 's#^        \(js_content edge.completion\|proxy_pass http://edge_llm_serving\);  \# completion$#"
        rf"        {content};  \# completion#' /etc/nginx/edge/site.conf"
        f" && grep -q '^    modsecurity {on};$' /etc/nginx/edge/site.conf"
        f" && grep -q '^    modsecurity_rules_file {rules};$' /etc/nginx/edge/site.conf"
        f" && grep -q '^        {content};  # completion$' /etc/nginx/edge/site.conf"
        " && /usr/local/sbin/edge-proxy-reload"
    )


def setup(workdir: Path, image: str) -> str:
    run(["docker", "rm", "-f", CONTAINER], check=False)
    log(f"starting {CONTAINER} from {image}")
    run(["docker", "run", "-d", "--name", CONTAINER, "--hostname", CONTAINER, "--label", "org.llmlab.bench=edge",
         *SYSTEMD_RUN_ARGS, image])  # fmt: skip
    for _ in range(120):
        state = run(["docker", "exec", CONTAINER, "systemctl", "is-system-running"], check=False).stdout.strip()
        if state in ("running", "degraded"):
            break
        time.sleep(1)
    key = secrets.token_hex(24)
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "community.docker.docker",
                "cluster_name": "bench",
                # What preflight (imported by every playbook) asks of any inventory.
                "cluster_zones": ["dmz"],
                "cluster_admin_networks": ["127.0.0.1/32"],
                "cluster_admin_users": [{"name": "benchadmin", "ssh_keys": [BENCH_SSH_KEY]}],
                "cluster_services": {
                    "https": {"port": 443, "protocol": "tcp", "group": "edge"},
                    "http": {"port": 80, "protocol": "tcp", "group": "edge"},
                    "edge_metrics": {"port": 3903, "protocol": "tcp", "group": "edge"},
                    "llm_serving": {"port": 8000, "port_end": 8015, "protocol": "tcp", "group": "gpu_nodes"},
                },
                "cluster_secrets": {"pki_ca_passphrase": secrets.token_hex(16), "edge_api_keys": {"bench": key}},
                "edge_proxy_rate_per_key": 1000000,
                "edge_proxy_burst_per_key": 1000000,
                "edge_proxy_rate_per_ip": 1000000,
                "edge_proxy_burst_per_ip": 1000000,
                "edge_proxy_streams_per_key": 60000,  # nginx: limit_conn < 65536
            },
            "children": {g: {"hosts": {CONTAINER: {}}} for g in ("edge", "gpu_nodes", "ops", "dmz")},
        }
    }
    inv = workdir / "inventory.yml"
    inv.write_text(json.dumps(inventory))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_CACHE_PLUGIN="memory")
    standin = {"standin_endpoints": [{"port": 8000, "colour": "blue", "weight": 100, "state": "active",
                                      "env": {"STANDIN_TOKEN_DELAY_MS": 0, "STANDIN_TOKENS": 1}}]}  # fmt: skip
    for playbook, extra, tags in (
        ("tests/doubles/trtllm-standin/serve-directly.yml", json.dumps(standin), "all"),
        ("playbooks/security/pki.yml", "{}", "all"),
        ("playbooks/edge.yml", "{}", "all"),
    ):
        log(f"ansible-playbook {playbook}")
        argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inv), playbook, "-e", extra]
        run([*argv, "--tags", *tags.split()], cwd=ROOT, env=env)
    log("installing wrk from the distribution")
    sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null")
    # A Lua long string takes the JSON as it is (no escapes are read inside [[ ]]).
    for name, body in (("bench-post.lua", CHAT_BODY), ("bench-plain.lua", plain_body())):
        text = json.dumps(body).replace("]]", "] ]")
        lua = f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{text}]]\n'
        run(["docker", "exec", "-i", CONTAINER, "sh", "-c", f"cat > /root/{name}"], input=lua)
    run(["docker", "exec", "-i", CONTAINER, "sh", "-c", "cat > /etc/nginx/modsec/shipped.conf"], input=SHIPPED_WAF)
    return key


def plain_body() -> dict:
    """CHAT_BODY with the code in the user's prompt replaced by plain text of the same length."""
    body = json.loads(json.dumps(CHAT_BODY))
    size = len(body["messages"][-1]["content"])
    body["messages"][-1]["content"] = (PLAIN_PROMPT * (size // len(PLAIN_PROMPT) + 1))[:size]
    return body


def versions() -> dict[str, str]:
    pkgs = sh("dpkg-query -W -f '${Package} ${Version}\\n' nginx 'libmodsecurity3*' libnginx-mod-http-modsecurity "
              "libnginx-mod-http-js modsecurity-crs wrk")  # fmt: skip
    return {"host": platform.node(), "cpus": str(os.cpu_count()), "packages": pkgs.strip()}


def render(samples: list[Sample], args: argparse.Namespace, info: dict[str, str], began: float) -> str:
    def agg(target: str, conc: int) -> dict[str, float]:
        rows = [s for s in samples if s.target == target and s.concurrency == conc]
        cpu = [s.nginx_cpu_ms for s in rows if s.nginx_cpu_ms is not None]
        return {
            "rps": statistics.median(s.rps for s in rows),
            "p50": statistics.median(s.p50_ms for s in rows),
            "p99": statistics.median(s.p99_ms for s in rows),
            "errors": sum(s.errors for s in rows),
            "cpu": statistics.median(cpu) if cpu else float("nan"),
            "load": statistics.mean(s.load for s in rows),
        }

    lines = [
        "# Edge proxy overhead: upstream directly, proxy without WAF, CRS as shipped, the role's edge",
        "",
        f"Measured by `scripts/bench_edge.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(began))}, "
        f"{args.rounds} rounds of {args.duration} s per target and concurrency, targets interleaved; "
        "each figure is the median over the rounds.",
        "",
        f"Setup: one container (image {args.image}) on a "
        f"{info['cpus']}-CPU machine; backend = the trtllm-serve test double (one token, no delay); "
        "edge = `edge_proxy` as converged by playbooks/edge.yml (TLS 1.3, HTTP/1.1 keep-alive from wrk, "
        "API key check and roles, the request schema in njs (edge.js), ModSecurity v3 + CRS at paranoia level 1 "
        "on headers, path and query plus the edge's header rules, JSON access log with token counts); "
        "`proxy, WAF off` and `WAF as shipped` proxy the chat route directly, without the schema; "
        "load = wrk over loopback, one chat POST of "
        f"{len(json.dumps(CHAT_BODY))} bytes with code in the prompt. `WAF as shipped` = Debian's "
        "/etc/nginx/modsecurity.conf with SecRuleEngine On, crs-setup.conf and every CRS rule file, no "
        "exclusions; it blocks prompts with code, so it gets the same body with a plain-text prompt of the same "
        "length. `nginx CPU` is the nginx workers' CPU time per request (from /proc).",
        "",
        "| target | concurrency | requests/s | p50 (ms) | p99 (ms) | errors | nginx CPU per request (ms) | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for conc in (1, args.concurrency):
        for target in TARGETS:
            a = agg(target, conc)
            cpu = "" if a["cpu"] != a["cpu"] else f"{a['cpu']:.3f}"
            lines.append(f"| {target} | {conc} | {a['rps']:.0f} | {a['p50']:.3f} | {a['p99']:.3f} | {int(a['errors'])} "
                         f"| {cpu} | {a['load']:.1f} |")  # fmt: skip
    d, off, shipped, on = (agg(t, 1) for t in TARGETS)
    hi_on = agg("the role's edge", args.concurrency)
    hi_shipped = agg("proxy, WAF as shipped", args.concurrency)
    hi_cpu = (hi_on["cpu"], hi_shipped["cpu"])
    lines += [
        "",
        "## Against the targets (issue 24: measured against CRS as shipped, in the same run)",
        "",
        f"- nginx CPU per inspected chat POST: **{on['cpu']:.3f} ms** against {shipped['cpu']:.3f} ms for CRS as "
        f"shipped at concurrency 1 (**{on['cpu'] / shipped['cpu']:.2f}x**), {hi_cpu[0]:.3f} against "
        f"{hi_cpu[1]:.3f} ms at concurrency {args.concurrency} (**{hi_cpu[0] / hi_cpu[1]:.2f}x**); target: at most "
        f"0.5x. Above the proxy without WAF ({off['cpu']:.3f} ms): {on['cpu'] - off['cpu']:.3f} against "
        f"{shipped['cpu'] - off['cpu']:.3f} ms ({(on['cpu'] - off['cpu']) / (shipped['cpu'] - off['cpu']):.2f}x; "
        "the role's WAF alone was 0.86x before the schema).",
        f"- Chat POST/s at concurrency {args.concurrency}: **{hi_on['rps']:.0f}** against {hi_shipped['rps']:.0f} "
        f"for CRS as shipped (**{hi_on['rps'] / hi_shipped['rps']:.2f}x**; target: at least 2x). The backend's own "
        f"ceiling in the same run: {agg('upstream directly', args.concurrency)['rps']:.0f}/s.",
        f"- Median at concurrency 1 over the upstream directly: +{on['p50'] - d['p50']:.3f} ms against "
        f"+{shipped['p50'] - d['p50']:.3f} ms for CRS as shipped "
        f"(the proxy without WAF: +{off['p50'] - d['p50']:.3f} ms).",
        "",
        "Reference from the issue: Debian's ModSecurity + CRS 3.3.4 at paranoia level 1, enabled naively, measured "
        "+1.6 ms median and 578 POST/s at concurrency 1 on our machines.",
        "",
        "## Environment",
        "",
        "```",
        info["packages"],
        "```",
        "",
        "Raw wrk output of every measurement: the `.json` file beside this one.",
        "",
    ]
    return "\n".join(lines)


def chart(samples: list[Sample], path: Path) -> bool:
    """nginx CPU per request and requests/s per target, at each concurrency (medians of the rounds)."""
    plt = charts.pyplot()
    if plt is None:
        return False
    levels = sorted({s.concurrency for s in samples})

    def median(target: str, conc: int, attr: str) -> float:
        values = [getattr(s, attr) for s in samples if s.target == target and s.concurrency == conc]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else float("nan")  # the upstream has no nginx

    fig, (cpu, rate) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [t.replace("proxy, ", "proxy,\n") for t in TARGETS]
    charts.bars(cpu, labels, {f"{c} connection(s)": [median(t, c, "nginx_cpu_ms") for t in TARGETS] for c in levels},
                "nginx CPU per request (ms)")  # fmt: skip
    charts.bars(rate, labels, {f"{c} connection(s)": [median(t, c, "rps") for t in TARGETS] for c in levels},
                "chat POST per second")  # fmt: skip
    cpu.set_title("nginx CPU per request (lower is better)")
    rate.set_title("requests per second (higher is better)")
    cpu.legend(fontsize=8)
    fig.suptitle("Edge proxy cost per target, same run, same machine", fontsize=10)
    charts.save(fig, path)
    plt.close(fig)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks" / "edge-overhead.md")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="the throughput measurement's connections")
    parser.add_argument("--keep", action="store_true", help="leave the container running afterwards")
    parser.add_argument("--image", default=IMAGE, help="the container's image (default: the lab's base image)")
    parser.add_argument("--quick", action="store_true", help="one round of 3 s per measurement")
    parser.add_argument("--chart-only", action="store_true", help="draw the chart from the JSON beside --output")
    args = parser.parse_args()
    if args.chart_only:
        raw = json.loads(args.output.with_suffix(".json").read_text())
        drawn = chart([Sample(**r) for r in raw], args.output.with_suffix(".png"))
        log(f"wrote {args.output.with_suffix('.png')}" if drawn else "no matplotlib: `make bench` installs it")
        return 0 if drawn else 1
    if args.quick:
        args.rounds, args.duration = 1, 3
    began = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            key = setup(Path(tmp), args.image)
            info = versions()
            samples: list[Sample] = []
            for rnd in range(1, args.rounds + 1):
                for target, (_, mode, _) in TARGETS.items():
                    set_waf(mode)
                    for conc in (1, args.concurrency):
                        s = measure(target, conc, args.duration, key)
                        log(f"round {rnd}: {target:18} c={conc:<3} {s.rps:8.0f}/s p50 {s.p50_ms:7.3f} ms "
                            f"p99 {s.p99_ms:7.3f} ms errors {s.errors} load {s.load:.1f}")  # fmt: skip
                        if s.errors:
                            raise SystemExit(f"{target}: {s.errors} of {s.requests} failed: no numbers written")
                        samples.append(s)
            set_waf("role")
        finally:
            if not args.keep:
                run(["docker", "rm", "-f", CONTAINER], check=False)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = render(samples, args, info, began)
    png = args.output.with_suffix(".png")
    if chart(samples, png):
        report += f"\n![nginx CPU per request and requests/s per target]({png.name})\n"
    args.output.write_text(report)
    raw = [s.__dict__ for s in samples]
    args.output.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    log(f"wrote {args.output}, {args.output.with_suffix('.json')}" + (f" and {png}" if png.exists() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The loopback targets both probers measure: nginx (HTTP and HTTPS) and dnsmasq.

nginx-light serves one HTTP and one HTTPS port on 127.0.0.1 (a 200 with two bytes), the
HTTPS certificate issued by a CA made on the spot for 127.0.0.1 and :data:`NAME`; dnsmasq
answers :data:`NAME` with 127.0.0.1 on a loopback address of this run's own, port 53 (Go's
resolver, hence blackbox_exporter's, reads no port from resolv.conf). Nothing leaves 127/8.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from egresswatch.bench.kinds import NAME
from egresswatch.bench.procs import BenchError, Tools, free_port, log_tail, process, wait_port
from egresswatch.localca import LocalCa


@dataclass(frozen=True)
class Lab:
    """The loopback targets and the files both probers need."""

    directory: Path
    http_port: int
    https_port: int
    dns_address: str
    ca_file: Path
    resolv_conf: Path

    def target(self, kind: str) -> str:
        """What one round of `kind` probes, as a target of egresswatch and of blackbox_exporter."""
        return {
            "tcp": f"127.0.0.1:{self.http_port}",
            "http": f"http://127.0.0.1:{self.http_port}/",
            "https": f"https://127.0.0.1:{self.https_port}/",
            "http_name": f"http://{NAME}:{self.http_port}/",
        }[kind]


def _certificates(directory: Path) -> Path:
    """ca.pem, leaf.pem and leaf.key in `directory` (the key readable by its owner only);
    returns ca.pem."""
    ca = LocalCa("egresswatch bench CA")
    leaf = ca.issue("127.0.0.1", NAME)
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    (directory / "leaf.pem").write_bytes(leaf.cert_pem)
    key = directory / "leaf.key"
    key.touch(mode=0o600)
    key.write_bytes(leaf.key_pem)
    return directory / "ca.pem"


def _nginx_conf(directory: Path, http_port: int, https_port: int) -> Path:
    d = directory
    conf = d / "nginx.conf"
    conf.write_text(
        f"daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;\n"
        f"error_log {d}/nginx.err;\nevents {{ worker_connections 4096; }}\n"
        f"http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};"
        f" fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};"
        f"\n server {{ listen 127.0.0.1:{http_port}; location / {{ return 200 'ok\\n'; }} }}\n"
        f" server {{ listen 127.0.0.1:{https_port} ssl; ssl_certificate {d}/leaf.pem;"
        f" ssl_certificate_key {d}/leaf.key; location / {{ return 200 'ok\\n'; }} }}\n}}\n"
    )
    return conf


def _dns_address() -> str:
    # Port 53 on an address of this run's own: two runs (or a system resolver) never collide.
    pid = os.getpid()
    return f"127.83.{(pid >> 8) % 256}.{pid % 254 + 1}"


@contextmanager
def loopback_targets(directory: Path, tools: Tools) -> Iterator[Lab]:
    """nginx and dnsmasq running for the block, their files in `directory`; BenchError when
    either does not come up."""
    ca_file = _certificates(directory)
    http_port, https_port = free_port(), free_port()
    dns_address = _dns_address()
    resolv = directory / "resolv.conf"
    resolv.write_text(f"nameserver {dns_address}\noptions ndots:1 timeout:1 attempts:1\n")
    conf = _nginx_conf(directory, http_port, https_port)
    nginx = [tools.nginx, "-p", str(directory), "-c", str(conf), "-e", "stderr"]
    dnsmasq = [
        tools.dnsmasq,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=53",
        f"--listen-address={dns_address}",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        f"--address=/{NAME}/127.0.0.1",
        # Answered here only: AAAA gets NODATA, as a cluster's resolver answers a name with no
        # IPv6 address. Without it dnsmasq (no upstream) refused AAAA, and the upstream step of
        # every by-name round retried: five queries a round instead of four.
        f"--local=/{NAME}/",
    ]
    with ExitStack() as stack:
        web_log, dns_log = directory / "nginx.log", directory / "dnsmasq.log"
        web = stack.enter_context(process(nginx, web_log))
        dns = stack.enter_context(process(dnsmasq, dns_log))
        wait_port(http_port, web, "nginx", web_log)
        wait_port(https_port, web, "nginx", web_log)
        time.sleep(0.3)  # dnsmasq binds UDP: nothing to connect to, so give it a moment
        if dns.poll() is not None:
            raise BenchError(f"dnsmasq exited with {dns.returncode}: {log_tail(dns_log)}")
        yield Lab(directory, http_port, https_port, dns_address, ca_file, resolv)

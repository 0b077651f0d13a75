"""The round kinds the benchmark measures, and the name the lab's dnsmasq answers.

A module of its own, importing nothing: the `bench` flags read it when any `egresswatch`
command starts, and an agent must not load the lab's certificate library for that
(tests/test_agent_imports.py).
"""

NAME = "bench.test"
KINDS = ("tcp", "http", "https", "http_name")

"""`egresswatch demo`: the service against its own endpoints on loopback, with faults injected.

- `pki`: a CA made at start (`localca`) and a server context per demo name.
- `endpoints`: the demo's DNS server and HTTPS endpoints on 127.0.0.1, switchable at runtime.
- `files`: the files it writes and keeps (resolv.conf, ca.pem, the service's config).
- `scenario`: the timeline (when each fault is injected and repaired), pure.
- `watch`: the rounds as they come (for the per-round lines), and the score, kept from the
  service's own incident events, pure.
- `printer`: the lines a person reads.
- `run`: wires it together: files, config, service, signals, exit code.
"""

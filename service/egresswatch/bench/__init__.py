"""`egresswatch bench`: egresswatch's full path against blackbox_exporter, side by side.

- `procs`: the processes it starts (by PID, stopped by PID), their CPU and RSS from /proc, the
  Debian tools it needs, found before anything starts.
- `kinds`: the round kinds measured (imports nothing: the flags read it at every start).
- `lab`: the loopback targets (nginx-light HTTP and HTTPS, dnsmasq answering a name), with a
  CA made on the spot (`localca`).
- `ours`: one measured `egresswatch run` process.
- `blackbox`: one measured blackbox_exporter process and the client driving it.
- `profile`: py-spy recording the egresswatch process during its window (``--profile``).
- `report`: medians, spreads, the table and the JSON rows, pure.
- `flags`: the command's flags, checked into :class:`flags.BenchOptions`.
- `run`: every (kind, rate), N times, alternating the two processes.
"""

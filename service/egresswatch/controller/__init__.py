"""The controller: what happens to a round after a probe made it (docs/architecture.md).

    ingest/     rounds in: validated once, stored in batches, then judged
    detection/  rounds -> step states and changes (hysteresis) -> incidents; restored at start
    diagnosis/  a failing round, its controls and peers -> the suspect, evidence, next command
    api/        the HTTP API that reads it all back

It never imports the probes or the agent (an import-linter contract).
"""

"""Stored rounds in; step states, changes and incidents out.

`hysteresis.Detector` turns rounds into per-step states and `Change`s (with `latency`'s
change-point detector for DEGRADED); `incidents.IncidentBook` turns changes into incidents;
`pipeline.Pipeline` feeds both, asks the diagnosis for verdicts and writes what they produce;
`restart` reads it all back when the controller starts. The rules are pure: no I/O, no clock.
"""

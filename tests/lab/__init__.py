"""The fault lab: a Kubernetes cluster's egress in network namespaces (docs/lab.md).

`topology.EgressLab` builds it and runs egresswatch in it; `world` holds the servers that run
inside its namespaces; `client` what the tests ask from inside; `python -m tests.lab up|down`
starts and removes one by hand.
"""

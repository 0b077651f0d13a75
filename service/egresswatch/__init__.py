"""egresswatch: the egress troubleshooting checklist, run continuously."""

__version__ = "0.1.0"

"""The agent: rounds on a timer (schedule), the round runner, the result sink and its buffer.

The agent never imports storage or the controller (DESIGN.md §5).
"""

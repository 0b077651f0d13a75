"""Kubernetes: the API client, watches, designated sources, NetworkPolicy evaluation."""

"""Rounds in: the one way every round enters the controller, local or pushed by an agent.

`intake.Ingest` validates, stores in batches (idempotent per batch id) and only then hands the
rounds to detection; `batch_body` reads the body of `POST /api/v1/results` strictly
(`plain_batch` its plain case, without pydantic).
"""

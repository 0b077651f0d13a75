"""The HTTP API (aiohttp): `app` (problem documents, health, metrics), `routes` (the v1
handlers), `query` (strict query parameters), `documents` and `diagnosis_document` (the JSON
answers), `openapi` and `openapi_schemas` (the OpenAPI 3.1 document, built from the same types).
"""

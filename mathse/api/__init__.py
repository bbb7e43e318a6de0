"""Calls to model APIs: the OpenAI-protocol client, the Batch API, request messages, reading replies."""

"""Pydantic models shared by the API and the workers. No I/O lives here."""

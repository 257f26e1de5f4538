"""Database access: URLs, shared engines, the ORM models, migrations and the embedded server."""

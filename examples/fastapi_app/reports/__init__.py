"""A FastAPI application that queues its background work with pgbg (see README.md)."""

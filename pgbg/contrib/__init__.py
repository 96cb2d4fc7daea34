"""Integrations of pgbg with frameworks; each subpackage needs its framework installed."""

"""Cluster mode (SPEC §11): several workers on one PostgreSQL and one NATS JetStream."""

"""SQLite access: the connection wrapper and the schema steps."""

from .database import Database, Row

__all__ = ["Database", "Row"]

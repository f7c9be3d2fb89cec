"""Live migration between agents (docs/decisions/0004-migration.md)."""

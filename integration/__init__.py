"""Privileged integration tests: real agents and runc containers, driven through the real CLI."""

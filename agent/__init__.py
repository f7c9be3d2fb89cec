"""The node agent: runs one hardware node's system containers (runc, CRIU, cgroups, netns)."""

__version__ = "0.1.0"

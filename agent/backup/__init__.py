"""vzdump: container backups (config + private area) as tar archives, and their restore.

`naming` (pure: archive names, retention, excludes, rate limit), `writer` (the tar + zstd pipe),
`dump` (the modes: copy while running, --stop, --suspend), `restore` (safe extraction into a new
private area or disk image). The gRPC layer is agent/service/storage_service.py.
"""

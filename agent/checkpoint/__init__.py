"""Checkpoint/restore of one container to a file (vzctl suspend|chkpnt, resume|restore)."""

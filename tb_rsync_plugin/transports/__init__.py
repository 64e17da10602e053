"""The transports: how a source's files reach staging, and how its changes are noticed.

One module per concern (rsync for local folders, ssh hosts and daemons; rclone for object
storage; the change probes), the ssh connection sharing and the child-process plumbing they
share. The engine talks to them only through `transport` (fetch, refetch) and `probes`.
"""

"""The requester: admits compute nodes, tracks their health and serves the operator API."""

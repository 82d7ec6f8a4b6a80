"""The Hive node agent: the compute daemon that joins a cluster and reports to its requester.

`hive-nodeagent run` starts it (see `nodeagent.__main__`); `NodeAgent` in
`nodeagent.service` owns the lifecycle; `identity` and `resources` hold what the
agent says about itself.
"""

from nodeagent.service import NodeAgent, main

__all__ = ["NodeAgent", "main"]

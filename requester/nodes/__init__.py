"""Node management: records and approval, health, what nodes send, requests to nodes,
and the node API."""

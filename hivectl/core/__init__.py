"""Code shared by hivectl, the requester and the node agent. Imports nothing from them."""

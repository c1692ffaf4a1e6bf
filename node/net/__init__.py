"""The mesh layer of a node: peer sessions and their handshake, the mesh adapter over gossip, node identity."""

"""The work layer of a node: coordinating jobs, serving this node's blocks, deployment plans, placement and reconfiguration decisions."""

"""The memory layer of a node: the block store, its SQLite state database, and the dual memory."""

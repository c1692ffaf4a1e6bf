"""Links between nodes: the ``Link`` interface, a direct TCP link, and (lazily) ICE links."""

"""The sedma node: daemon, local API, client, CLI, placement and dual memory."""

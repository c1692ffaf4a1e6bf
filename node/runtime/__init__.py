"""What keeps a daemon running and observable, apart from what it does: the supervised
background loops and their heartbeats, event-loop lag, spans and logs, memory tracing,
and the measured capacity and CPU quota of the machine it runs on."""

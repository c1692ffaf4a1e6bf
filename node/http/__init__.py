"""The daemon's read-only HTTP face: a live dashboard and Prometheus ``/metrics``.

``server`` carries requests (aiohttp, limits, token); ``views`` turns the daemon's state
into the JSON the pages poll; ``collector`` exposes the same state to Prometheus;
``history`` keeps the short time series the dashboard plots. The pages are plain files in
``static/`` shipped with the package (no build step, no CDN).
"""

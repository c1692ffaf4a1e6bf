"""pytest fixtures for the NAT lab; test modules import them by name."""

from __future__ import annotations

import pytest

from tests.natlab.driver import Mesh
from tests.natlab.lab import Lab, missing_requirements

#: Sites 1, 2 behind cone NATs; 3, 4 behind symmetric NATs.
SITE_KINDS = ["cone", "cone", "symmetric", "symmetric"]


@pytest.fixture(scope="module")
def lab():
    """A lab with coturn running; torn down (processes killed, namespaces deleted) always."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    lab = Lab(SITE_KINDS)
    try:
        lab.up()
        lab.start_coturn()
        yield lab
    finally:
        lab.down()


@pytest.fixture
async def mesh(lab):
    mesh = Mesh(lab)
    try:
        yield mesh
    finally:
        await mesh.close()

"""The web console (``overlayctl console``): the network as a whole, rendered on the server
from the store (aiohttp + jinja2, no JavaScript), and the management writes of overlayctl
behind a confirmation step. ``view`` builds what the pages show, ``pages`` and ``actions``
serve them, ``security`` guards every request, ``server`` listens (docs/console.md).
"""

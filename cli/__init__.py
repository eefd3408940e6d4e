"""Click command-line interface (``embedx.cli``): parse, call the library, render.

Loads only as ``embedx.cli``: imported as a top-level ``cli`` (the repository root on ``sys.path``) it hands over
to a distribution of that name, or fails as a plain miss (``embedx._noshadow``).
"""
from embedx._noshadow import only_as

only_as(__name__, "embedx.cli", __file__)

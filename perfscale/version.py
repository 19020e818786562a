"""perfscale's version: a leaf every layer may import (the package's __init__ is the public façade, above
everything: `perfscale.Campaign`)."""

__version__ = "0.1.0"

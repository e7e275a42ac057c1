"""obpipe: market-data and order-book engine whose hot paths run at native speed.

This package is the glue shared by every part: configuration (``obpipe.config``) and
the command line (``obpipe.cli``).  The parts themselves are the top-level packages
``ring``, ``engine``, ``feed_sim``, ``analysis`` and ``publisher``.
"""

__version__ = "0.1.0"

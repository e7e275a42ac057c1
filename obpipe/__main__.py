import sys

from obpipe.cli import main

sys.exit(main())

import sys

from dynrcnn.cli import main

sys.exit(main())

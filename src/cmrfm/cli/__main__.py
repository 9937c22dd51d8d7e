import sys

from cmrfm.cli import main

sys.exit(main())

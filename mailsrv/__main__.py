"""``python -m mailsrv`` is the ``mailsrv`` command."""

import sys

from mailsrv.cli import main

sys.exit(main())

"""``python -m nix_job.exchange``: the token-exchange service's entry point.

The one place of the package that reads the process environment; everything else receives it.
"""

from __future__ import annotations

import os
import sys

from nix_job.exchange.service import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))

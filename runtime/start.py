"""Runtime step of action.yml (not a developer script): start nix-job from the action's own
checkout, with the runtime packages vendored in runtime/vendor (built from the hash-pinned lock by
./scripts/vendor): no pip, no virtual environment, no package index. Run it with ``python -I``,
so nothing from the runner's PYTHONPATH or site-packages is imported."""

import os
import sys

if sys.version_info < (3, 11):  # noqa: UP036 - this line must run on any Python to say so
    sys.exit(f"nix-job needs Python 3.11 or newer, not {sys.version.split()[0]}")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(HERE, "vendor")]

from nix_job.__main__ import main  # noqa: E402 - the path above comes first

sys.exit(main())

"""``python -m audiotag.hear MODEL``: load MODEL as the HEAR kit would and check the HEAR rules."""

import sys

from audiotag.hear import main

sys.exit(main())

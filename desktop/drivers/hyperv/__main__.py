"""``python -m desktop.drivers.hyperv setup``: the same as `cove setup hyperv`."""

import sys

from desktop.drivers.hyperv.driver import main

sys.exit(main())

import sys

from desktop.tray import main

sys.exit(main())

import sys

from vm_image.cli import main

sys.exit(main())

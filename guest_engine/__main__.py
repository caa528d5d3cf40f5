import sys

from guest_engine.agent import main

sys.exit(main())

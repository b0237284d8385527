import sys

from rewardbooth.cli import main

sys.exit(main())

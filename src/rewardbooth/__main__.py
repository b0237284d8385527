import os
import sys

# `python -m` puts the working folder first on the import path, so a module lying there (one shipped in a
# downloaded run folder, say) would shadow any package a config names: take it off (Python 3.11+: -P does this).
if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from rewardbooth.cli import main  # noqa: E402 - after the import path is made safe

sys.exit(main())

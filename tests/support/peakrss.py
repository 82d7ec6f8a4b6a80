"""Run a command and report its peak resident memory: `python peakrss.py OUT CMD...`.

The command is this process's only child, so RUSAGE_CHILDREN's ru_maxrss (KiB on Linux)
is exactly its peak. The figure goes to the file OUT; the command's exit status and
output pass through unchanged.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path


def main() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    code = subprocess.call(argv)
    out.write_text(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
    return code


if __name__ == "__main__":
    sys.exit(main())

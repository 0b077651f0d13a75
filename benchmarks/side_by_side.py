"""egresswatch's full path against blackbox_exporter, side by side (not a test): a thin
wrapper of `egresswatch bench`, kept so the benchmarks folder runs every benchmark the same way.

The machinery is in the package (``egresswatch.bench``); this takes the same flags:

    python benchmarks/side_by_side.py [--kinds tcp,http,https,http_name] [--rates 200,500]
                                      [--warmup 6] [--window 10] [--repeat 3] [--json]
                                      [--max-concurrent N] [--profile DIR]
"""

from __future__ import annotations

import sys

from egresswatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

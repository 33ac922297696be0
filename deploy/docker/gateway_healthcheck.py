"""Gateway container health check: exit 0 when GET /health answers 200.

The gateway answers 503 until it has read the progress topic up to its end
(it cannot yet tell a new job from an unknown one), when its progress tail
stopped, and while it shuts down. Standard library only.
"""

import os
import sys
import urllib.error
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8080')}/health"
try:
    with urllib.request.urlopen(url, timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except (urllib.error.URLError, OSError) as exc:
    print(f"{url}: {exc}", file=sys.stderr)
    sys.exit(1)

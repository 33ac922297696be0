"""Container health check: exit 0 when GET /health answers 200.

The service answers 503 while the model loads, when it is not in its
consumer group and while it drains, so "unhealthy" here means "do not send
work", not necessarily "restart". Standard library only: it runs in the
image's interpreter without importing the service.
"""

import os
import sys
import urllib.error
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health"
try:
    with urllib.request.urlopen(url, timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except (urllib.error.URLError, OSError) as exc:
    print(f"{url}: {exc}", file=sys.stderr)
    sys.exit(1)

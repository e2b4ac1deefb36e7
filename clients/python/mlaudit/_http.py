"""The one HTTP call the logger makes (urllib from the standard library)."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

#: How the error text of a request that could not even be sent (a configuration error,
#: not the network) begins.
REQUEST_ERROR = "the request could not be sent"


def post_json_array(url: str, bodies: List[bytes], headers: Dict[str, str],
                    timeout: float) -> Tuple[Optional[int], Any, str]:
    """POST ``[body, body, ...]``; returns ``(status, parsed JSON or None, error text)``.

    ``status`` is None when no HTTP answer was received (refused, reset, timeout, DNS).
    """
    data = b"[" + b",".join(bodies) + b"]"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        try:
            raw = e.read()
        except Exception:
            raw = b""
        status = e.code
    except (urllib.error.URLError, OSError, socket.timeout, http.client.HTTPException) as e:
        return None, None, f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    except Exception as e:  # a malformed URL, a header that is not Latin-1, ...
        return None, None, f"{REQUEST_ERROR} ({type(e).__name__}: {e})"
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = None
    err = ""
    if status != 200:
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            err = f"{doc['error'].get('code')}: {doc['error'].get('message')}"
        else:
            err = raw[:200].decode("utf-8", "replace")
    elif not isinstance(doc, dict):
        # A 200 whose body we cannot read is not an acknowledgement we can trust.
        return None, None, "HTTP 200 with an unreadable body"
    return status, doc, err

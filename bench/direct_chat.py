"""The floor for `lf chat`: the smallest httpx script that sends the same streamed chat request.
It reads the stream with httpx-sse; it is standalone on purpose (no import of lf).

Usage: python bench/direct_chat.py BASE_URL MODEL MESSAGE MAX_TOKENS
Prints the answer's tokens as they arrive (flushed one by one, like `lf chat`), then a newline; the
number of content events goes to stderr as `tokens N`.
"""

import json
import sys

import httpx
from httpx_sse import connect_sse

base_url, model, message, max_tokens = sys.argv[1:5]
payload = {
    "model": model,
    "temperature": 0.0,
    "max_tokens": int(max_tokens),
    "messages": [{"role": "user", "content": message}],
    "stream": True,
}
count = 0
with httpx.Client(timeout=httpx.Timeout(300.0, connect=5.0), trust_env=False) as client:
    with connect_sse(client, "POST", base_url.rstrip("/") + "/chat/completions", json=payload) as event_source:
        event_source.response.raise_for_status()
        for sse in event_source.iter_sse():
            if sse.data == "[DONE]":
                break
            for choice in json.loads(sse.data).get("choices") or []:
                token = (choice.get("delta") or {}).get("content")
                if token:
                    count += 1
                    sys.stdout.write(token)
                    sys.stdout.flush()
sys.stdout.write("\n")
sys.stdout.flush()
print(f"tokens {count}", file=sys.stderr)

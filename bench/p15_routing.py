"""P15: what a router model adds to the time to first token.

A router (`provider: router`, LlamaFarm's semantic-router shape: all-MiniLM-L6-v2 as its embedder, three routes of
ten utterances, threshold 0.6) whose routes and default all go to one SmolLM2-135M entry, through `lf serve`. The
subject asks the router; the floor asks the target by its own name, through the same gateway: the difference is the
routing decision (the message embedded by MiniLM on llama.cpp, then compared with the 30 utterances). Warm: both the
embedder and the target run before timing, and the utterances' embeddings are made. Streamed, max_tokens 8, the
time from sending the request to the first content event; the messages cycle through ten held-out questions,
the same on both sides, with llama.cpp's prompt cache off for both. Both
sides alternate (40 requests each; 10 with --quick). Target: the routing adds at most 15 ms at the median.
"""

from __future__ import annotations

import http.client
import json
import statistics
import time

from harness import Bench, BenchError, Row, Sandbox, alternate, free_port, lf_argv, stop_group, wait_http_ok

EMBEDDER = "all-minilm-l6-v2"
ROUTES = {
    "billing": ["what is my bill", "how much do I owe", "payment options", "invoice question", "billing statement"],
    "support": ["help with login", "password reset", "can't access my account", "app not working", "error message"],
    "sales": ["pricing information", "enterprise plan", "get a quote", "upgrade subscription", "free trial"],
}
QUESTIONS = [
    "How much is my current bill this month?",
    "When do I have to pay my invoice?",
    "I can't log in to my account",
    "The app crashes every time I open it",
    "How much does the enterprise plan cost?",
    "Is there a free trial available?",
    "What's the weather like in Paris tomorrow?",
    "Who wrote Romeo and Juliet?",
    "How do I reset my password?",
    "Can you compare your plans for me?",
]


def first_token(port: int, model: str, message: str) -> float:
    """Seconds from sending a streamed chat to its first content event (the answer is then read to its end)."""
    payload = {
        "model": model,
        "temperature": 0.0,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": message}],
        "stream": True,
        "cache_prompt": False,  # llama.cpp's prompt cache would favour whichever side asks a question second
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    first = None
    try:
        conn.request(
            "POST", "/v1/chat/completions", body=json.dumps(payload), headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"{model}: HTTP {response.status}: {response.read()[:300]!r}")
        for raw in response:
            line = raw.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise BenchError(f"{model}: {event['error']}")
            if first is None and any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                first = time.perf_counter() - started
    finally:
        conn.close()
    if first is None:
        raise BenchError(f"{model}: no content in the answer to {message!r}")
    return first


def config(target_port: int) -> str:
    routes = "".join(
        f"        - name: {name}\n          target_model: target\n          utterances: {json.dumps(utterances)}\n"
        for name, utterances in ROUTES.items()
    )
    return (
        "version: v1\nname: bench\nnamespace: bench\nruntime:\n  models:\n"
        "    - name: router\n      provider: router\n"
        f"      embedder_model: {EMBEDDER}\n      default_model: target\n      similarity_threshold: 0.6\n"
        "      routes:\n" + routes + "    - {name: target, provider: llamacpp, model: smollm2-135m, idle_ttl: 0, "
        f"provider_config: {{port: {target_port}}}}}\n"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(bench: Bench) -> list[Row]:
    bench.log("P15: time to first token through a router vs asking its target by name, warm")
    box = Sandbox(bench, "p15")
    box.lf("models", "fetch", EMBEDDER, check=True, timeout=900)
    port = free_port()
    (box.work / "llamafarm.yaml").write_text(config(free_port()))
    gateway = bench.spawn(
        [*lf_argv(), "serve", "--port", str(port), "--idle-ttl", "0"], box.env, box.work, box.root / "serve.log"
    )
    try:
        wait_http_ok(port, "/health/liveness", gateway, timeout=60)
        for question in QUESTIONS:  # starts both engines, embeds the utterances, warms the caches
            first_token(port, "router", question)
            first_token(port, "target", question)
        reps = 10 if bench.args.quick else 40
        routed_n, direct_n = iter(range(reps)), iter(range(reps))  # each side asks the same questions in turn

        def through_router() -> float:
            return first_token(port, "router", QUESTIONS[next(routed_n) % len(QUESTIONS)])

        def by_name() -> float:
            return first_token(port, "target", QUESTIONS[next(direct_n) % len(QUESTIONS)])

        routed, direct = alternate(through_router, by_name, reps, 0)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/health")
        (router,) = json.loads(conn.getresponse().read())["routers"]
        conn.close()
    finally:
        stop_group(gateway, timeout=60)
    r50, d50 = statistics.median(routed), statistics.median(direct)
    added50 = (r50 - d50) * 1000
    added95 = (percentile(routed, 0.95) - percentile(direct, 0.95)) * 1000
    bench.extra["p15"] = {"routed": routed, "direct": direct, "router": router}
    return [
        Row(
            "P15",
            "time to first token through a router (all-MiniLM-L6-v2 embedder, 3 routes) vs its target asked by name, "
            "both through `lf serve`, warm",
            f"p50 {r50 * 1000:.1f} ms, p95 {percentile(routed, 0.95) * 1000:.1f} ms",
            f"p50 {d50 * 1000:.1f} ms, p95 {percentile(direct, 0.95) * 1000:.1f} ms",
            r50 / d50,
            "≤ +15 ms at p50",
            added50 <= 15,
            f"added: {added50:+.1f} ms at p50, {added95:+.1f} ms at p95; the embedding alone (the router's own "
            f"timing in /health): p50 {router['embedding_ms_p50']} ms, p95 {router['embedding_ms_p95']} ms; "
            f"SmolLM2-135M, max_tokens 8, streamed; {reps} requests each side, alternating; 10 questions in turn",
        )
    ]


def explain(bench: Bench, row: Row) -> list[str]:
    found = bench.extra.get("p15")
    if not found or row.met is not False:
        return []
    return [
        f"The router's embedding took {found['router']['embedding_ms_p50']} ms at the median: on this machine the "
        "embedding model competes with the target's engine for the same two cores."
    ]

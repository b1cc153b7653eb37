"""P12: an answer that would not end, through `lf serve` with its default max_tokens_default.

A prompt that makes SmolLM2-135M count for ever ("Write the numbers from 1 to 10000, separated by commas:",
temperature 0: it runs past 2048 tokens, where "Count from 1 to 100000, one number per line" stops by itself after a
few hundred), sent without max_tokens through `lf serve` (no --max-tokens-default: the setting's default applies,
never more than the instance's context). The row reports the tokens generated, how the answer ended
(finish_reason), its wall time, and how many answers the gateway counts as cut at the bound it set. Target: it ends
within max_tokens_default tokens with finish_reason "length".

Floor: the same streamed request straight to the engine the gateway started, with max_tokens set to that number:
what the answer costs when the client bounds it itself. Both sides alternate (3 rounds; 1 with --quick).
"""

from __future__ import annotations

import http.client
import json
import time

from harness import (
    Bench,
    BenchError,
    Row,
    Sandbox,
    alternate,
    free_port,
    lf_argv,
    median,
    metric_total,
    stop_group,
    wait_http_ok,
)

PROMPT = "Write the numbers from 1 to 10000, separated by commas:"


def stream(port: int, model: str, max_tokens: int | None) -> dict:
    """One streamed chat, read to its end: the tokens generated (the usage the engine reports, else the content
    events), the finish_reason of its last choice, and the wall time from sending to [DONE]."""
    payload: dict = {
        "model": model,
        "temperature": 0.0,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    started = time.perf_counter()
    events, finish, usage, done = 0, None, None, False
    try:
        conn.request(
            "POST", "/v1/chat/completions", body=json.dumps(payload), headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"port {port}: HTTP {response.status}: {response.read()[:300]!r}")
        for raw in response:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                raise BenchError(f"port {port}: {event['error']}")
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    events += 1
                finish = choice.get("finish_reason") or finish
    finally:
        conn.close()
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return {
        "wall": time.perf_counter() - started,
        "tokens": tokens if isinstance(tokens, int) else events,
        "events": events,
        "finish": finish,
        "done": done,
    }


def measure(bench: Bench) -> list[Row]:
    from lf.config.gateway import GATEWAY_SETTINGS

    bench.log("P12: a looping answer without max_tokens through lf serve vs the engine asked with max_tokens")
    engine_port, port = free_port(), free_port()
    box = Sandbox(bench, "p12")
    (box.work / "llamafarm.yaml").write_text(
        "version: v1\nname: bench\nnamespace: bench\nruntime:\n  models:\n"
        "    - {name: smol, provider: llamacpp, model: smollm2-135m, idle_ttl: 0, "
        f"provider_config: {{port: {engine_port}}}}}\n"
    )
    gateway = bench.spawn(
        [*lf_argv(), "serve", "--port", str(port), "--probe-interval", "1"], box.env, box.work, box.root / "serve.log"
    )
    try:
        wait_http_ok(port, "/health/liveness", gateway, timeout=60)
        stream(port, "smol", 4)  # starts smol through the gateway
        default = GATEWAY_SETTINGS["max_tokens_default"].default
        assert isinstance(default, int)
        context = box.record("smol")["settings"].get("context_size")
        bound = min(default, context) if isinstance(context, int) else default
        rounds = 1 if bench.args.quick else 3
        through, direct = alternate(
            lambda: stream(port, "smol", None), lambda: stream(engine_port, "x", bound), rounds, 0
        )
        cut = metric_total(port, "lf_gateway_answers_cut_total", 'reason="max_tokens_default"')
    finally:
        stop_group(gateway, timeout=60)
    ended = [r for r in through if r["finish"] == "length" and r["tokens"] <= bound and r["done"]]
    g, d = median([r["wall"] for r in through]), median([r["wall"] for r in direct])
    bench.extra["p12"] = {"through": through, "direct": direct, "bound": bound}

    def seen(runs: list[dict]) -> str:
        return ", ".join(f"{r['tokens']} ({r['finish']})" for r in runs)

    return [
        Row(
            "P12",
            f"a looping prompt without max_tokens through `lf serve` (max_tokens_default {default}): tokens, "
            "finish_reason, wall time vs the engine asked with max_tokens the same",
            f"{median([r['tokens'] for r in through]):.0f} tok, {through[0]['finish']}, {g:.1f} s",
            f"{median([r['tokens'] for r in direct]):.0f} tok, {direct[0]['finish']}, {d:.1f} s",
            g / d,
            f"finish_reason length within {bound} tokens",
            len(ended) == len(through),
            f"SmolLM2-135M, temperature 0, {PROMPT!r}, streamed; {rounds} alternating rounds; context {context}, so "
            f"the bound is min({default}, context) = {bound}; tokens as the engine's usage counts them "
            "(finish_reason): "
            f"through lf {seen(through)}, direct {seen(direct)}; the gateway counted {cut:.0f} answers cut at the "
            "max_tokens it set (lf_gateway_answers_cut_total, reason max_tokens_default); ratio is of wall times",
        )
    ]


def explain(bench: Bench, row: Row) -> list[str]:
    found = bench.extra.get("p12")
    if not found:
        return []
    bound = found["bound"]
    wrong = [r for r in found["through"] if not (r["finish"] == "length" and r["tokens"] <= bound and r["done"])]
    lines = []
    for r in wrong:
        if r["finish"] == "stop":
            lines.append(
                f"An answer ended by itself after {r['tokens']} tokens (finish_reason stop): the model stopped "
                "looping, lf had nothing to bound. The prompt no longer makes this model loop at temperature 0."
            )
        elif r["tokens"] > bound:
            lines.append(
                f"An answer ran to {r['tokens']} tokens, past {bound}: the gateway did not set max_tokens on a request "
                "that had none (lf.gateway.app, _bounded)."
            )
        else:
            lines.append(
                f"An answer ended with finish_reason {r['finish']!r} after {r['tokens']} tokens ([DONE]: {r['done']})."
            )
    return lines

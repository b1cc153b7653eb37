"""P4: `lf chat "…" --max-tokens 64 --temperature 0` against bench/direct_chat.py (a minimal httpx script sending
the same streamed request) on one running llamacpp instance, alternately.

P4a compares wall time (target ≤ 1.15×), P4b the steady token rate seen at the bench's end of each stdout pipe
(target ≥ 0.97×). Also records both sides' peak RSS and lf chat's import profile.
"""

from __future__ import annotations

import importtime
from harness import (
    CHAT_MESSAGE,
    HERE,
    PY,
    Bench,
    BenchError,
    Row,
    Run,
    alternate,
    checked,
    median,
    ms,
    rates,
    run,
    spread,
)

CHAT_TOKENS = 64


def measure(bench: Bench) -> list[Row]:
    bench.log(f"P4: lf chat '…' --max-tokens {CHAT_TOKENS} vs a minimal httpx script (bench/direct_chat.py)")
    box, record = bench.running_llamacpp()
    lf_cmd = ["chat", CHAT_MESSAGE, "--max-tokens", str(CHAT_TOKENS), "--temperature", "0"]
    direct_cmd = [PY, str(HERE / "direct_chat.py"), record["base_url"], record["model"], CHAT_MESSAGE, str(CHAT_TOKENS)]

    lf_runs, direct_runs = alternate(
        lambda: box.lf(*lf_cmd, stream=True, check=True),
        lambda: checked(run(direct_cmd, box.env, box.work, stream=True), "bench/direct_chat.py"),
        bench.chat_reps,
        bench.warmup,
    )
    tokens = token_count(direct_runs[-1])
    reference = direct_runs[-1].stdout
    lf_rates, direct_rates, approximate = [], [], 0
    for r in direct_runs:
        direct_rates.append(stream_rates(r, token_count(r)))
    for r in lf_runs:
        n = tokens
        if r.stdout != reference:  # a different answer: scale the count by its length
            n = max(2, round(tokens * len(r.stdout) / max(1, len(reference))))
            approximate += 1
        lf_rates.append(stream_rates(r, n))

    s, f = median([r.wall for r in lf_runs]), median([r.wall for r in direct_runs])
    wall = Row(
        "P4a",
        f'`lf chat "…" --max-tokens {CHAT_TOKENS}` wall time vs minimal httpx script',
        ms(s),
        ms(f),
        s / f,
        "≤ 1.15×",
        s / f <= 1.15,
        f"{tokens} tokens per answer; " + spread(lf_runs, direct_runs),
    )

    rs, rf = median([r["steady"] for r in lf_rates]), median([r["steady"] for r in direct_rates])
    os_, of = median([r["overall"] for r in lf_rates]), median([r["overall"] for r in direct_rates])
    note = (
        "steady rate = 1 ÷ median gap between tokens arriving on the reader's end of stdout; "
        f"first-to-last rate {os_:.1f} vs {of:.1f} tok/s = {os_ / of:.2f}× (stalls from other work on the machine move this one)"
    )
    per_round = [x["steady"] / y["steady"] for x, y in zip(lf_rates, direct_rates)]
    bench.extra["p4"] = {"pairs": per_round}
    note += f"; median of per-round steady ratios {median(per_round):.2f}×"
    if approximate:
        note += f"; {approximate} lf answers differed from the direct one, their first-to-last count scaled by length"
    speed = Row(
        "P4b",
        "streamed tokens/s (steady) through `lf chat` vs direct",
        f"{rs:.1f} tok/s",
        f"{rf:.1f} tok/s",
        rs / rf,
        "≥ 0.97×",
        rs / rf >= 0.97,
        note,
    )

    bench.memory.append(
        ("`lf chat … --max-tokens 64`", median([r.rss_kb for r in lf_runs]) / 1024, "runtime already running")
    )
    bench.memory.append(("minimal httpx chat script (floor)", median([r.rss_kb for r in direct_runs]) / 1024, ""))
    bench.profiles["chat"] = importtime.profile(bench, box, lf_cmd)
    return [wall, speed]


def token_count(result: Run) -> int:
    for line in result.stderr.splitlines():
        if line.startswith("tokens "):
            return int(line.split()[1])
    raise BenchError("bench/direct_chat.py did not report its token count")


def stream_rates(result: Run, tokens: int) -> dict:
    return rates([t for t, data in result.chunks if data.strip()], tokens)


def explain(bench: Bench, row: Row) -> list[str]:
    if row.id == "P4a":
        return importtime.reasons(bench, "chat")
    if row.id == "P4b" and "p4" in bench.extra:
        pairs = sorted(bench.extra["p4"]["pairs"])
        return [
            f"Per-round ratios (each lf answer against the direct answer next to it): median {median(pairs):.2f}×, "
            f"range {pairs[0]:.2f}–{pairs[-1]:.2f}×. lf's per-token work is the direct script's (httpx `iter_lines`, "
            "`json.loads`, one write+flush per token); when the per-round median is near 1 the shortfall of the "
            "ratio of medians is other work on the machine landing on different runs. Rerun on a quiet machine; if "
            "it persists, profile `lf.core.client.chat` per token."
        ]
    return []

"""Injected bot traffic against the worker's anomaly guard (issue 10, item 2), on both real logs.

A handful of bots, one fixed configuration (:data:`BOTS`: not fitted to a log), is merged by event time
into each real log: a fast click flood, a one-item hammer (someone pushing a product up the popular
list), a catalogue scraper and a slow hammer. Every user event then goes through
:class:`coldstart.model.anomaly.ActivityGuard` in stream order, as the worker's batch path does
before it applies anything, and the clicks that pass feed the worker's stream statistics
(:class:`coldstart.model.stats.StreamStats`). Reported beside the two baselines measured in the same
run, the clean log and the same injection with no guard:

- bot events flagged (goal >= 95%) and genuine events flagged (goal <= 1%), with the reasons;
- the popular top-10 as each bot stops (what every user with no history is shown, when the bot's pull
  on the decayed popularity is largest) against the clean log's at the same times, and the co-click
  neighbours with their counts ("people who clicked X also clicked") of every item against the clean
  log's, also with the guard but without taking a flagged user's earlier clicks back out: unchanged is
  the goal.

The guard needs no broker (a pure object over event time); the worker's use of it (a flagged event
goes to the DLQ with its reason and changes nothing) is tested against a real broker in
``tests/streams``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from coldstart.replay import ReplayEvent
from coldstart.settings import Settings


@dataclass(frozen=True)
class Bot:
    name: str
    clicks: int
    every_s: float
    items: str  # "random" (any item), "one" (the same item every time), "cycle" (through the catalogue)


# One configuration for every log: rates and volumes of automated traffic, not of any log's users.
BOTS: tuple[Bot, ...] = (
    Bot("flood", 3_600, 2.0, "random"),  # one click every 2 s for 2 hours
    Bot("hammer", 2_880, 30.0, "one"),  # the same item every 30 s for a day
    Bot("scraper", 5_760, 15.0, "cycle"),  # every item in turn, every 15 s for a day
    Bot("slow_hammer", 864, 300.0, "one"),  # the same item every 5 minutes for 3 days
)


def inject_bots(events: Sequence[ReplayEvent], bots: Sequence[Bot] = BOTS, seed: int = 0
                ) -> tuple[list[ReplayEvent], set[str]]:
    """``events`` with the bots' clicks merged in by time, and the bots' event ids.

    Each bot starts at a random time within the log's span and clicks items that the log clicks.

    >>> log = [ReplayEvent("click", "u", {"event_id": f"e{i}", "user_id": "u", "item_id": f"i{i % 3}",
    ...                                   "ts": float(i)}, float(i)) for i in range(10)]
    >>> merged, bot_ids = inject_bots(log, (Bot("b", 5, 1.0, "one"),))
    >>> len(merged), len(bot_ids), [e.ts for e in merged] == sorted(e.ts for e in merged)
    (15, 5, True)
    """
    rng = random.Random(seed)
    user = [e for e in events if e.type in ("search", "click")]
    items = sorted({e.value["item_id"] for e in user if e.type == "click"})
    if not items:
        raise ValueError("the log has no clicks to imitate")
    t0, t1 = min(e.ts for e in user), max(e.ts for e in user)
    added: list[ReplayEvent] = []
    for b, bot in enumerate(bots):
        user_id = f"bot-{bot.name}-{seed}"
        start = rng.uniform(t0, max(t0, t1 - bot.clicks * bot.every_s))
        target = rng.choice(items)
        for i in range(bot.clicks):
            item = {"one": target, "cycle": items[i % len(items)]}.get(bot.items) or rng.choice(items)
            ts = start + i * bot.every_s
            value = {"event_id": f"{user_id}-{i}", "user_id": user_id, "item_id": item, "ts": ts}
            added.append(ReplayEvent("click", user_id, value, ts))
    merged = sorted(list(events) + added, key=lambda e: e.ts)  # stable: the log's order within a time
    return merged, {e.value["event_id"] for e in added}


@dataclass
class GuardRun:
    flagged_bot: int
    flagged_genuine: int
    bot_events: int
    genuine_events: int
    reasons: Counter
    top10: list[list[str]]  # the popular top-10 at each checkpoint
    neighbours: dict[str, dict[str, float]]  # item -> co-clicked items with counts, at the end


def run_guard(events: Sequence[ReplayEvent], bot_ids: set[str], checkpoints: Sequence[float] = (),
              guard: bool = True, retract: bool = True) -> GuardRun:
    """The guard over ``events`` in order (``guard=False``: everything passes), and the statistics the
    clicks that pass leave behind: the popular top-10 at each of ``checkpoints`` (event times: when a
    bot stops, its effect on the decayed popularity is largest) and the co-click neighbours at the end."""
    from coldstart.model.anomaly import ActivityGuard
    from coldstart.model.stats import StreamStats

    checker = ActivityGuard() if guard else None
    stats = StreamStats()  # the worker's defaults (popularity half-life 3 days)
    reasons: Counter = Counter()
    flagged_bot = flagged_genuine = bot_events = genuine_events = 0
    checkpoints = sorted(checkpoints)
    top10: list[list[str]] = []
    for e in events:
        if e.type not in ("search", "click"):
            continue
        v = e.value
        is_bot = v["event_id"] in bot_ids
        bot_events += is_bot
        genuine_events += not is_bot
        reason = checker.observe(v["user_id"], e.ts, v.get("item_id"), v["event_id"]) if checker else None
        if checker is not None:  # as the worker: a newly flagged user's earlier clicks come back out
            earlier = checker.take_retractions()
            if retract:
                stats.retract([event_id for _, event_id in earlier])
        while checkpoints and e.ts >= checkpoints[0]:
            at = checkpoints.pop(0)
            top10.append(sorted(stats.pop, key=lambda item: -stats.popularity(item, at))[:10])
        if reason:
            reasons[reason] += 1
            flagged_bot += is_bot
            flagged_genuine += not is_bot
            continue
        if e.type == "click":
            stats.observe(v["event_id"], v["user_id"], v["item_id"], e.ts, query=v.get("query"))
    for at in checkpoints:  # after the last event
        top10.append(sorted(stats.pop, key=lambda item: -stats.popularity(item, at))[:10])
    neighbours = {item: stats.neighbours(stats.coclicks, item) for item in stats.coclicks}
    return GuardRun(flagged_bot, flagged_genuine, bot_events, genuine_events, reasons, top10, neighbours)


def same_top10(run: GuardRun, clean: GuardRun) -> float:
    """Mean share of the clean log's popular top-10 that ``run`` shows too, over the checkpoints."""
    pairs = list(zip(run.top10, clean.top10))
    return sum(len(set(a) & set(b)) / 10 for a, b in pairs) / max(len(pairs), 1)


def same_neighbours(run: GuardRun, clean: GuardRun) -> float:
    """Share of the clean log's items with co-clicks whose co-click neighbours and counts are exactly
    the clean log's (the "people who clicked X also clicked" a user is shown)."""
    def exact(row: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 6) for k, v in row.items()}

    items = [i for i, row in clean.neighbours.items() if row]
    if not items:
        return 1.0
    return sum(exact(run.neighbours.get(i, {})) == exact(clean.neighbours[i]) for i in items) / len(items)


def bench_bots(settings: Settings, datasets: Sequence[str] = ("bestbuy", "amazon"), seed: int = 0) -> dict:
    from coldstart.replay import open_dataset

    rows, out = [], {}
    for name in datasets:
        events = list(open_dataset(name, settings.shared_data))
        merged, bot_ids = inject_bots(events, seed=seed)
        ends = sorted({e.ts for e in merged if e.value.get("event_id") in bot_ids and
                       e.value["event_id"].endswith(tuple(f"-{b.clicks - 1}" for b in BOTS))})
        clean = run_guard(events, set(), ends, guard=False)
        guarded = run_guard(merged, bot_ids, ends, guard=True)
        unguarded = run_guard(merged, bot_ids, ends, guard=False)
        kept = run_guard(merged, bot_ids, ends, guard=True, retract=False)
        clean_guarded = run_guard(events, set(), guard=True)
        bot_share = guarded.flagged_bot / max(guarded.bot_events, 1)
        fp_share = guarded.flagged_genuine / max(guarded.genuine_events, 1)
        top_on, top_off = same_top10(guarded, clean), same_top10(unguarded, clean)
        nb_on, nb_off, nb_kept = (same_neighbours(r, clean) for r in (guarded, unguarded, kept))
        out[name] = {"bot_events": guarded.bot_events, "genuine_events": guarded.genuine_events,
                     "bot_flagged": bot_share, "genuine_flagged": fp_share,
                     "genuine_flagged_without_bots": clean_guarded.flagged_genuine / max(clean_guarded.genuine_events, 1),
                     "reasons": dict(guarded.reasons), "top10_same_guard_on": top_on, "top10_same_guard_off": top_off,
                     "neighbours_same_guard_on": nb_on, "neighbours_same_guard_off": nb_off,
                     "neighbours_same_without_retraction": nb_kept}
        rows += [
            (f"{name}: bot events flagged", f"{bot_share:.1%} of {guarded.bot_events:,}",
             ", ".join(f"{k} {v:,}" for k, v in sorted(guarded.reasons.items())), "-", ">= 95%"),
            (f"{name}: genuine events flagged", f"{fp_share:.2%} of {guarded.genuine_events:,}",
             f"{clean_guarded.flagged_genuine:,} in the clean log", "-", "<= 1%"),
            (f"{name}: popular top-10 shared with the clean log's, as each bot stops", f"{top_on:.0%} with the guard",
             f"{top_off:.0%} without", "-", "100%"),
            (f"{name}: items whose co-clicks = the clean log's", f"{nb_on:.1%} with the guard",
             f"{nb_off:.1%} without; {nb_kept:.1%} with the guard, earlier clicks kept", "-", "100%"),
        ]
    return {"datasets": out, "rows": rows}


__all__ = ["BOTS", "Bot", "GuardRun", "bench_bots", "inject_bots", "run_guard", "same_neighbours", "same_top10"]

"""Bot-like users: flagged from bounded per-user counters, so their events stay out of learning.

A user whose behaviour is not human poisons three things at once: the training samples (thousands of
clicks the trainer would learn from), the popularity prior every cold user sees, and the importance
statistics. The worker asks :class:`ActivityGuard` about every parsed event *before* it is applied;
a flagged event goes to the DLQ with the reason as its label (counted by reason, never dropped
silently) and changes no profile, popularity count or sample.

Rules (each a count within a time window, in event time so a replay flags the same users):

* ``impossible_rate``: ``burst_events`` events within ``burst_window_s`` (default 20 in 60 s: one
  click every 3 s for a minute, sustained, is a script, not a shopper);
* ``click_flood``: ``flood_events`` events within ``flood_window_s`` (default 200 in a day);
* ``same_item_repeated``: ``same_item_clicks`` clicks of one item (default 30; people re-open a
  product a few times, not dozens).

Once flagged, a user stays flagged (for the life of the guard, bounded by ``max_users`` LRU): a bot
that slows down is still a bot, and its earlier events were the evidence.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["BOT_REASONS", "ActivityGuard", "AnomalyRules", "UserActivity", "bot_reason"]

# The DLQ reasons of a flagged user's events (what every worker's catalog reader keeps out of its
# statistics, whichever worker flagged the user).
BOT_REASONS = frozenset({"impossible_rate", "click_flood", "same_item_repeated"})


@dataclass(frozen=True)
class AnomalyRules:
    burst_events: int = 20
    burst_window_s: float = 60.0
    flood_events: int = 200
    flood_window_s: float = 86_400.0
    same_item_clicks: int = 30
    max_items_tracked: int = 64  # per user: the item counter is bounded too

    def __post_init__(self) -> None:
        if min(self.burst_events, self.flood_events, self.same_item_clicks, self.max_items_tracked) < 2:
            raise ValueError(f"anomaly thresholds must be at least 2: {self}")


# One user's counters as the guard stores them: (event times, (item, clicks) pairs, flagged reason,
# recent event ids); see ActivityGuard.__init__ for why tuples.
Counters = tuple[tuple[float, ...], tuple[tuple[str, int], ...], str | None, tuple[str, ...]]

SEEN_EVENTS = 256  # event ids kept per user: a redelivery counts once, and a flagged user's are retracted


@dataclass
class UserActivity:
    """The counters of one user: recent event times (bounded), per-item click counts (bounded), the
    rule that flagged them, and the ids of their recent events."""

    times: tuple[float, ...] = ()
    item_clicks: dict[str, int] = field(default_factory=dict)
    flagged: str | None = None
    seen: tuple[str, ...] = ()


def span_of_last(times: tuple[float, ...], n: int) -> float | None:
    """Seconds covered by the last ``n`` event times, or None with fewer than ``n``.

    >>> span_of_last((0.0, 5.0, 9.0, 10.0), 3)
    5.0
    >>> span_of_last((0.0,), 3) is None
    True
    """
    if len(times) < n:
        return None
    last = times[-n:]
    return max(last) - min(last)


def bot_reason(activity: UserActivity, rules: AnomalyRules) -> str | None:
    """The first rule the counters break, or None: a pure function of the counters.

    >>> rules = AnomalyRules(burst_events=3, burst_window_s=10.0)
    >>> bot_reason(UserActivity(times=(0.0, 2.0, 4.0)), rules)
    'impossible_rate'
    >>> bot_reason(UserActivity(times=(0.0, 20.0, 40.0)), rules) is None
    True
    >>> bot_reason(UserActivity(times=(0.0,), item_clicks={"i": 30}), rules)
    'same_item_repeated'
    """
    span = span_of_last(activity.times, rules.burst_events)
    if span is not None and span < rules.burst_window_s:
        return "impossible_rate"
    span = span_of_last(activity.times, rules.flood_events)
    if span is not None and span < rules.flood_window_s:
        return "click_flood"
    if activity.item_clicks and max(activity.item_clicks.values()) >= rules.same_item_clicks:
        return "same_item_repeated"
    return None


class ActivityGuard:
    """Per-user counters for the users one worker owns (bounded LRU) and the flag for each event.

    >>> guard = ActivityGuard(AnomalyRules(burst_events=3, burst_window_s=10.0))
    >>> [guard.observe("bot", float(t), "i1") for t in range(4)]
    [None, None, 'impossible_rate', 'impossible_rate']
    >>> guard.observe("human", 0.0, "i1") is None
    True
    """

    def __init__(self, rules: AnomalyRules | None = None, max_users: int = 200_000) -> None:
        self.rules = rules or AnomalyRules()
        self.max_users = max_users
        # user id -> (event times, (item, clicks) pairs, flagged reason, recent event ids): tuples of
        # floats, of pairs and of str, and a str or None, which the garbage collector stops tracking once
        # it has seen them (issue 11; a deque, an array.array, a list, or a tuple holding a dict, it
        # tracks for ever). As a dataclass with two deques a user, the guard was 240k of the 350k
        # objects every full collection of a worker scanned after a replay (~90 MB of deque blocks too).
        self._users: OrderedDict[str, Counters] = OrderedDict()
        self.flagged_events: dict[str, int] = {}
        # The earlier events of users flagged since the last take_retractions(): they passed while the
        # evidence built up (a flood is flagged at its 20th or 200th event) and were applied, so the
        # caller takes them back out of what other users see (popularity, co-clicks, transitions).
        self._retract: list[tuple[str, str]] = []  # (user id, event id)

    @property
    def n_users(self) -> int:
        """Users with counters (at most ``max_users``). Not ``__len__``: that would make a guard with
        no users yet false, and ``if guard:`` skip it."""
        return len(self._users)

    def activity(self, user_id: str) -> UserActivity | None:
        """A copy of ``user_id``'s counters, or None."""
        record = self._users.get(user_id)
        if record is None:
            return None
        times, item_clicks, flagged, seen = record
        return UserActivity(times, dict(item_clicks), flagged, seen)

    def observe(self, user_id: str, ts: float, item_id: str | None = None, event_id: str | None = None) -> str | None:
        """Count one event (``item_id`` for a click) and return the reason to flag it, or None.

        An ``event_id`` seen before (at-least-once redelivery) is not counted again.
        """
        record = self._users.pop(user_id, None)
        times, clicks, flagged, seen = record if record is not None else ((), (), None, ())
        if event_id is not None and event_id in seen:
            self._users[user_id] = (times, clicks, flagged, seen)
            return flagged
        if event_id is not None:
            seen = (seen + (event_id,))[-SEEN_EVENTS:]
        rules = self.rules
        times = (times + (float(ts),))[-max(rules.burst_events, rules.flood_events):]
        item_clicks = dict(clicks)
        if item_id is not None:
            item_clicks[item_id] = item_clicks.get(item_id, 0) + 1
            if len(item_clicks) > rules.max_items_tracked:
                del item_clicks[min(item_clicks, key=item_clicks.__getitem__)]
            clicks = tuple(item_clicks.items())
        if flagged is None:
            flagged = bot_reason(UserActivity(times, item_clicks), rules)
            if flagged is not None:  # the evidence: every event before this one
                earlier = seen[:-1] if event_id is not None else seen
                self._retract.extend((user_id, e) for e in earlier)
        if flagged is not None:
            self.flagged_events[flagged] = self.flagged_events.get(flagged, 0) + 1
        self._users[user_id] = (times, clicks, flagged, seen)  # most recently used last
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)
        return flagged

    def take_retractions(self) -> list[tuple[str, str]]:
        """``(user id, event id)`` of newly flagged users' earlier events (at most the last 256 per
        user), once each.

        >>> guard = ActivityGuard(AnomalyRules(burst_events=3, burst_window_s=10.0))
        >>> [guard.observe("bot", float(t), "i1", f"e{t}") for t in range(4)]
        [None, None, 'impossible_rate', 'impossible_rate']
        >>> guard.take_retractions(), guard.take_retractions()
        ([('bot', 'e0'), ('bot', 'e1')], [])
        """
        out, self._retract = self._retract, []
        return out

    def has_retractions(self) -> bool:
        return bool(self._retract)

    def reason(self, user_id: str) -> str | None:
        """The rule ``user_id`` was flagged by, or None."""
        record = self._users.get(user_id)
        return record[2] if record is not None else None

    def is_flagged(self, user_id: str) -> bool:
        return self.reason(user_id) is not None

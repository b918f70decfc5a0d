"""A small simulated shop: the built-in event source for ``coldstart demo`` and for tests.

Items have human-readable titles built from a per-category vocabulary ("Sonora wireless noise
cancelling headphones"). Users have one or two latent interest categories; in a session a user
searches with words of an item from one of their categories and clicks it (or a neighbour in the same
category), or just clicks while browsing. New items appear over time and are announced before anyone
clicks them. User activity is heavy-tailed, so most users are seen only once or twice: the cold start.

The site has ``n_users`` active users at any moment. Each user comes with a lifetime number of
sessions drawn from a power law (most get one, a few many); when a user has used them up, a new user
takes the place. So however long the stream, most users it shows have one to three events.

Everything is a function of the seed: two simulators with the same arguments yield the same events.

>>> sim = SiteSimulator(seed=1, n_items=20, n_users=30)
>>> [e.type for e in sim.events(5)][:1]
['item']
>>> list(sim.events(50)) == list(SiteSimulator(seed=1, n_items=20, n_users=30).events(50))
True
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from coldstart.replay.events import ReplayEvent

# category -> (nouns, adjectives, brands). Multi-word entries make queries realistic.
VOCABULARY: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "audio": (
        ("headphones", "earbuds", "bluetooth speaker", "soundbar", "turntable", "microphone"),
        ("wireless", "noise cancelling", "portable", "waterproof", "studio", "bass boost"),
        ("Sonora", "Vibe", "Acoustix"),
    ),
    "games": (
        ("racing game", "puzzle game", "controller", "gaming headset", "strategy game", "console"),
        ("multiplayer", "co-op", "open world", "retro", "wireless", "limited edition"),
        ("Pixelforge", "Arcadia", "Nimbus"),
    ),
    "office": (
        ("desk lamp", "stapler", "notebook", "ink cartridge", "label maker", "file folders"),
        ("ergonomic", "refillable", "heavy duty", "recycled", "compact", "colour"),
        ("Paperline", "Deskwise", "Officio"),
    ),
    "kitchen": (
        ("chef knife", "blender", "coffee grinder", "frying pan", "kettle", "cutting board"),
        ("stainless steel", "non-stick", "electric", "cast iron", "bamboo", "professional"),
        ("Cucina", "Hearth", "Brewmaster"),
    ),
    "garden": (
        ("hose", "pruning shears", "planter", "lawn mower", "seed kit", "watering can"),
        ("expandable", "cordless", "raised", "organic", "solar", "heavy duty"),
        ("Greenway", "Verdant", "Rootstock"),
    ),
    "outdoor": (
        ("tent", "sleeping bag", "hiking backpack", "headlamp", "camping stove", "water filter"),
        ("ultralight", "waterproof", "four season", "rechargeable", "insulated", "compact"),
        ("Trailhead", "Summit", "Northfox"),
    ),
    "books": (
        ("mystery novel", "cookbook", "travel guide", "science fiction novel", "biography", "atlas"),
        ("bestselling", "illustrated", "hardcover", "paperback", "award winning", "annotated"),
        ("Inkwell", "Folio", "Lantern"),
    ),
    "fitness": (
        ("yoga mat", "dumbbells", "resistance bands", "running shoes", "jump rope", "foam roller"),
        ("adjustable", "non-slip", "lightweight", "high density", "breathable", "pro"),
        ("Stride", "Corefit", "Pulse"),
    ),
}
CATEGORIES: tuple[str, ...] = tuple(VOCABULARY)
_BUDGETS = tuple(range(1, 31))
_BUDGET_WEIGHTS = tuple(k**-2.2 for k in _BUDGETS)
DEFAULT_START_TS = 1_735_689_600.0  # 2025-01-01T00:00Z: fixed, so the default stream is reproducible


@dataclass(frozen=True, slots=True)
class SimItem:
    item_id: str
    title: str
    category: str


class SiteSimulator:
    """A deterministic simulated shop.

    ``n_items`` items exist at the start; one more appears every ``new_items_every`` events.
    ``n_users`` users are active at any moment; a user who has used up their sessions is replaced.
    A user's interests and session budget depend only on the seed and the user's index.
    """

    def __init__(
        self, seed: int = 0, n_items: int = 200, n_users: int = 500, new_items_every: int = 50
    ) -> None:
        if n_items < 1 or n_users < 1 or new_items_every < 1:
            raise ValueError("n_items, n_users and new_items_every must all be at least 1")
        self.seed = seed
        self.n_items = n_items
        self.n_users = n_users
        self.new_items_every = new_items_every
        self._users_created = 0  # by the last events() call, for interests()

    @staticmethod
    def user_id(index: int) -> str:
        return f"u{index:05d}"

    def item(self, index: int) -> SimItem:
        """The ``index``-th item ever created (the first ``n_items`` form the starting catalog)."""
        rng = random.Random(f"{self.seed}:item:{index}")
        category = CATEGORIES[index % len(CATEGORIES)]
        nouns, adjectives, brands = VOCABULARY[category]
        words = [rng.choice(brands), *rng.sample(adjectives, rng.choice((1, 2))), rng.choice(nouns)]
        return SimItem(f"i{index:05d}", " ".join(words), category)

    def catalog(self, n_events: int = 0) -> list[SimItem]:
        """Items that exist after ``n_events`` events: the starting catalog plus the ones added since."""
        added = max(n_events - 1, 0) // self.new_items_every  # announced before events 50, 100, ...
        return [self.item(i) for i in range(self.n_items + added)]

    def interests_of(self, user_id: str) -> tuple[str, ...]:
        """A user's true interest categories (one or two): what the recommender should discover."""
        rng = random.Random(f"{self.seed}:user:{user_id}")
        return tuple(rng.sample(CATEGORIES, rng.choice((1, 1, 2))))

    def _session_budget(self, user_id: str) -> int:
        # P(k) ~ k^-2.2 over 1..30: about two users in three come for a single session.
        rng = random.Random(f"{self.seed}:budget:{user_id}")
        return rng.choices(_BUDGETS, weights=_BUDGET_WEIGHTS)[0]

    def interests(self) -> dict[str, tuple[str, ...]]:
        """Interests of every user the last ``events()`` run created (the first ``n_users`` before any)."""
        count = max(self._users_created, self.n_users)
        return {self.user_id(u): self.interests_of(self.user_id(u)) for u in range(count)}

    def events(self, n_events: int, start_ts: float | None = None) -> Iterator[ReplayEvent]:
        """``n_events`` searches and clicks (item announcements come on top), in time order.

        The starting catalog is announced first; then every ``new_items_every`` events one new item.
        Timestamps start at ``start_ts`` (default a fixed date, for reproducibility; the demo passes
        the current time) and grow by a few seconds per event.
        """
        rng = random.Random(f"{self.seed}:events")
        clock = DEFAULT_START_TS if start_ts is None else float(start_ts)
        by_category: dict[str, list[SimItem]] = {c: [] for c in CATEGORIES}
        created = 0
        slots = [self.user_id(u) for u in range(self.n_users)]
        left = {user: self._session_budget(user) for user in slots}
        self._users_created = self.n_users

        def announce() -> ReplayEvent:
            nonlocal created
            item = self.item(created)
            created += 1
            by_category[item.category].append(item)
            value = {"item_id": item.item_id, "title": item.title, "category": item.category, "ts": clock}
            return ReplayEvent("item", item.item_id, value, clock)

        for _ in range(self.n_items):
            yield announce()

        emitted = 0
        session = 0
        while emitted < n_events:
            slot = rng.randrange(self.n_users)
            user = slots[slot]
            left[user] -= 1
            if left[user] == 0:  # last session: a newcomer takes the place afterwards
                del left[user]
                newcomer = self.user_id(self._users_created)
                self._users_created += 1
                slots[slot] = newcomer
                left[newcomer] = self._session_budget(newcomer)
            # Mostly an interest category; sometimes a stray click elsewhere (noise).
            interests = self.interests_of(user)
            category = rng.choice(interests) if rng.random() < 0.9 else rng.choice(CATEGORIES)
            pool = by_category[category] or [i for items in by_category.values() for i in items]
            # Newer items are a bit more popular: sample from the tail with a rising weight.
            target = rng.choices(pool, weights=[1.0 + k / len(pool) for k in range(len(pool))])[0]
            session += 1
            session_id = f"sim{self.seed}-s{session:07d}"
            steps: list[tuple[str, dict]] = []
            query = None
            if rng.random() < 0.7:
                words = target.title.split()[1:]  # drop the brand: people search for things
                keep = rng.randint(1, len(words))
                query = " ".join(words[-keep:])
                steps.append(("search", {"query": query, "session_id": session_id}))
            clicked = target if rng.random() < 0.85 else rng.choice(by_category[target.category])
            click = {"item_id": clicked.item_id, "position": rng.randint(0, 4) if query else None}
            if query:
                click["query"] = query
            steps.append(("click", click))
            for kind, fields in steps:
                if emitted >= n_events:
                    break
                if emitted and emitted % self.new_items_every == 0:
                    yield announce()
                clock = round(clock + rng.expovariate(1 / 2.0) + 0.001, 3)
                emitted += 1
                value = {"event_id": f"sim{self.seed}-{emitted:08d}", "user_id": user, "ts": clock}
                value.update({k: v for k, v in fields.items() if v is not None})
                yield ReplayEvent(kind, user, value, clock)

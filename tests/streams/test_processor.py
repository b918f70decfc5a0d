"""The batch step on its own, without a broker: parsed events and stored states in, new states and
training samples out. The real MiniLM weights on the CPU; fixture factories build events and states."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from coldstart.contract import ClickEvent, SearchEvent
from coldstart.errors import ConfigError
from coldstart.model.serving import ServingModel
from coldstart.settings import Settings
from coldstart.streams.processor import BatchProcessor, profile_matrix
from coldstart.streams.state import ProfileState

pytestmark = pytest.mark.model

TS = 1_700_000_000.0
_ids = itertools.count()


@pytest.fixture(scope="module")
def model() -> ServingModel:
    m = ServingModel.load(device="cpu")
    for item_id, title in {"hp": "Wireless noise cancelling headphones", "kb": "Mechanical gaming keyboard",
                           "st": "Heavy duty office stapler", "pan": "Non-stick frying pan"}.items():
        m.items.upsert(item_id, title)
    m.items.refresh(m.encoder, m.cache)
    return m


@pytest.fixture
def processor(model) -> BatchProcessor:
    return BatchProcessor(Settings(device="cpu"), model)


def search(user: str, query: str, ts: float = TS, event_id: str | None = None) -> SearchEvent:
    return SearchEvent(event_id or f"s{next(_ids)}", user, ts, query)


def click(user: str, item_id: str, query: str | None = None, ts: float = TS,
          event_id: str | None = None) -> ClickEvent:
    return ClickEvent(event_id or f"c{next(_ids)}", user, ts, item_id, query)


def test_a_cold_users_first_search_makes_a_profile_in_the_serving_space(processor, model) -> None:
    out = processor.process([search("u1", "bluetooth headphones")], {})
    state = out.profiles["u1"]
    assert state.n_events == 1 and state.version == model.version
    vec = torch.from_numpy(state.vector)
    assert abs(float(vec.norm()) - 1.0) < 1e-4
    items, valid = model.items.matrix()
    assert model.items.ids[int((items[valid] @ vec).argmax())] == "hp"
    assert out.samples == []  # a search has no label: no training sample
    (w,) = out.importance["search"]
    assert 0.1 <= w <= 4.0


def test_only_events_without_an_item_vector_have_their_text_encoded(model) -> None:
    """A click's text (the query before it) is not encoded once its item has a vector: a serving replica,
    whose cache never saw the worker's encodes, paid a forward pass for each on its request path."""
    from coldstart.streams.processor import event_vectors
    from coldstart.streams.state import RecentEvent

    state = ProfileState("u-enc", events=[
        RecentEvent("e1", "search", TS, text="a query no test encoded before 7f3a"),
        RecentEvent("e2", "click", TS + 1, text="the query before the click 7f3a", item_id="hp"),
        RecentEvent("e3", "click", TS + 2, text="a click on an item without a vector 7f3a", item_id="unknown")])
    misses, lookups = model.cache.misses, model.cache.hits + model.cache.misses
    vecs, weights, owner, slots = event_vectors(model, [state], half_life_s=3600.0)
    assert (model.cache.misses - misses, model.cache.hits + model.cache.misses - lookups) == (2, 2)
    assert slots == [(0, 0), (0, 1), (0, 2)]
    items, _ = model.items.matrix()
    assert torch.equal(vecs[1], items[model.items.row["hp"]])  # the click is its item's vector
    third = model.cache.encode(model.encoder, ["a click on an item without a vector 7f3a"])[0]
    assert torch.allclose(vecs[2], third)  # an item without a vector falls back to the click's text


def test_an_event_id_seen_before_changes_nothing(processor) -> None:
    first = search("u2", "office stapler", event_id="dup-1")
    out = processor.process([first, first], {})  # twice within one batch
    assert out.duplicates == 1 and out.profiles["u2"].n_events == 1
    stored = ProfileState.loads(out.profiles["u2"].dumps())
    again = processor.process([first], {"u2": stored})  # redelivered in a later batch
    assert again.duplicates == 1 and again.samples == [] and again.importance == {"search": [], "click": []}
    # The state may be written again (a kill between the table write and the commit re-sends it), but
    # it is the same profile: same count, same vector.
    for state in again.profiles.values():
        assert state.n_events == 1 and np.allclose(state.vector, stored.vector, atol=1e-6)


def test_a_click_yields_one_sample_with_the_items_text_and_a_bounded_weight(processor, model) -> None:
    out = processor.process([click("u3", "kb", query="gaming keyboard")], {})
    (sample,) = out.samples
    assert (sample.user_id, sample.item_id, sample.context) == ("u3", "kb", "gaming keyboard")
    assert sample.item_text == "Mechanical gaming keyboard" and sample.model_version == model.version
    assert 0.1 <= sample.weight <= 4.0 and np.isfinite(sample.loss) and sample.prior_events == 0


def test_a_click_without_a_query_learns_from_what_the_user_did_before(processor) -> None:
    # A log of clicks only (Amazon): the context is the titles of the user's earlier clicks and
    # searches, newest first -- never the empty string, which taught the trainer nothing but noise.
    first = processor.process([click("u9", "hp"), search("u9", "frying pan", ts=TS + 1)], {})
    out = processor.process([click("u9", "st", ts=TS + 2)], first.profiles)
    (sample,) = out.samples
    assert sample.context == "frying pan ; Wireless noise cancelling headphones"
    assert first.samples[0].context == ""  # nothing before the very first click


def test_click_weights_follow_the_configured_estimator(model) -> None:
    """COLDSTART_IMPORTANCE_ESTIMATOR picks the worker's weights: ``uniform`` gives every fresh user's
    click the same weight, ``loss`` weighs a surprising click above an expected one."""
    def weights(estimator: str) -> dict[str, float]:
        p = BatchProcessor(Settings(device="cpu", importance_estimator=estimator), model)
        expected = click(f"{estimator}-a", "kb", query="mechanical gaming keyboard")
        surprising = click(f"{estimator}-b", "pan", query="mechanical gaming keyboard")
        out = p.process([expected, surprising], {})
        return {s.item_id: s.weight for s in out.samples}

    uniform, by_loss = weights("uniform"), weights("loss")
    assert uniform["kb"] == pytest.approx(uniform["pan"])
    assert by_loss["pan"] > by_loss["kb"]
    with pytest.raises(ConfigError, match="reducible_loss"):  # refused before any worker object exists
        Settings(device="cpu", importance_estimator="reducible_loss")


def test_an_untitled_item_learns_its_vector_from_the_query_before_the_click(processor, model) -> None:
    assert "new-sku" not in model.items.row
    processor.process([click("u4", "new-sku", query="halo 3 xbox game")], {})
    row = model.items.row["new-sku"]
    assert bool(model.items.valid[row])
    expected = model.encoder.encode(["halo 3 xbox game"])[0]
    assert torch.allclose(model.items.vectors[row], expected, atol=1e-5)


def test_a_profile_from_another_version_is_recomputed_not_mixed(processor, model) -> None:
    old = processor.process([search("u5", "frying pan")], {}).profiles["u5"]
    old.vector = np.ones_like(old.vector) / np.sqrt(old.vector.size)  # a vector from another space
    old.version = "v-older"
    out = processor.process([search("u5", "kitchen pan", ts=TS + 1)], {"u5": old})
    state = out.profiles["u5"]
    assert state.version == model.version and state.n_events == 2
    fresh = profile_matrix(model, [state], Settings().half_life_s)[0].numpy()
    assert np.allclose(state.vector, fresh, atol=1e-5)


def test_same_events_give_the_same_profile_in_one_batch_or_two(processor) -> None:
    events = [search("u6", "noise cancelling", ts=TS), click("u6", "hp", ts=TS + 5)]
    together = processor.process(events, {}).profiles["u6"]
    first = processor.process(events[:1], {}).profiles["u6"]
    # The second call sees the stored state, as the worker would after a table round trip.
    apart = processor.process(events[1:], {"u6": ProfileState.loads(first.dumps())}).profiles["u6"]
    assert together.n_events == apart.n_events == 2
    assert np.allclose(together.vector, apart.vector, atol=1e-5)


def test_recommendations_read_while_the_writer_thread_counts_clicks(processor, model) -> None:
    """The worker counts clicks on its writer thread while the event loop serves recommendations from
    the same statistics and cache: a reader must never trip over a dict the writer is resizing."""
    import threading

    from coldstart.streams.recommender import Recommender

    recommender = Recommender(Settings(device="cpu"), model)
    state = processor.process([search("u7", "headphones"), click("u7", "hp", ts=TS + 1)], {}).profiles["u7"]
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            # New items, users and queries (the dicts keep resizing), bounded so the reads stay fast.
            for i in range(50_000):
                if stop.is_set():
                    return
                recommender.stats.observe(f"w{i}", f"user{i % 97}", ["hp", "kb", "st", "pan"][i % 4],
                                          TS + i, query=f"q{i % 500}")
                recommender.stats.note_item(f"new{i}", TS + i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    import sys

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible: provoke the interleaving
    writer = threading.Thread(target=write)
    writer.start()
    try:
        while writer.is_alive():
            assert recommender.recommend(state, k=3)
    finally:
        stop.set()
        writer.join()
        sys.setswitchinterval(switch)
    assert errors == []


def test_where_the_coarse_index_serves_a_batch_is_scored_against_near_items_and_a_sample() -> None:
    """Issue 11: at a million items a batch's products with every item took seconds, so where the
    coarse index serves, each event is scored against the items in the groups near its context and a
    uniform sample of the rest (each drawn item standing for those it samples). On a catalogue of real
    titles, forced on, the losses, the weights of every click and the searches' weights stay close to
    those over every item, and a click on an unrelated item stays the implausible one."""
    m = ServingModel.load(device="cpu")
    kinds = ["headphones", "keyboard", "stapler", "frying pan", "running shoes", "desk lamp", "backpack", "mug"]
    for k, kind in enumerate(kinds):
        for j in range(60):
            m.items.upsert(f"{k}-{j}", f"{kind} model {j} by brand {j % 7}")
    m.items.refresh(m.encoder, m.cache)
    while m.items.maintain_coarse(1, budget=10_000):
        pass
    assert m.items.coarse is not None
    events = []
    for k, kind in enumerate(kinds):
        events += [search(f"cu{k}", f"{kind} brand 3", event_id=f"cs{k}"),
                   click(f"cu{k}", f"{k}-3", query=f"{kind} brand 3", event_id=f"cc{k}"),
                   click(f"cv{k}", f"{(k + 4) % 8}-5", query=f"{kind} brand 3", event_id=f"cn{k}")]  # unrelated
    out = {}
    for name, settings in (("every", Settings(device="cpu", ann_min_items=0)),
                           ("coarse", Settings(device="cpu", ann_min_items=1, importance_sample=16))):
        processor = BatchProcessor(settings, m)
        scored_against, columns = [], processor._sampled_columns

        def spy(*args):
            found = columns(*args)
            scored_against.append(found.vecs.shape[0])
            return found

        processor._sampled_columns = spy
        result = processor.process(events, {})
        out[name] = ({s.sample_id: (s.loss, s.weight) for s in result.samples}, result.importance["search"])
        if name == "coarse":  # two chunks (16 + 8 events), each against part of the catalogue, not all 480
            assert len(scored_against) == 2 and max(scored_against) < 480, scored_against
        else:
            assert scored_against == []
    every, coarse = out["every"], out["coarse"]
    assert every[0].keys() == coarse[0].keys() and len(every[0]) == 16
    for sample_id, (loss, weight) in every[0].items():
        assert coarse[0][sample_id][0] == pytest.approx(loss, abs=0.25)
        assert coarse[0][sample_id][1] == pytest.approx(weight, abs=0.2)
        if sample_id.startswith("cn"):  # a click on an unrelated item: far less likely than the genuine one
            assert coarse[0][sample_id][0] > coarse[0]["cc" + sample_id[2:]][0] + 2.0
    assert coarse[1] == pytest.approx(every[1], abs=0.2)

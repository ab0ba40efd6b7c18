"""plan_route: a chain of hops over gossiped layer offers, or None when the layers are not all covered."""

from __future__ import annotations

import itertools
import random

import pytest

from language_pipes.pipes.routing import Hop, Offer, plan_route

LOCAL = "origin"


def test_a_single_remote_node_hosting_everything_is_one_hop() -> None:
    assert plan_route(1, 30, [Offer("layers", 1, 30)], LOCAL) == (Hop("layers", 1, 30),)


def test_two_nodes_splitting_the_layers_chain_in_order() -> None:
    offers = [Offer("b", 16, 30), Offer("a", 1, 16)]
    assert plan_route(1, 30, offers, LOCAL) == (Hop("a", 1, 16), Hop("b", 16, 30))


@pytest.mark.parametrize(
    "offers",
    [
        [],
        [Offer("a", 1, 15)],  # the tail is missing
        [Offer("a", 2, 30)],  # the first shared layer is missing
        [Offer("a", 1, 10), Offer("b", 11, 30)],  # layer 10 is missing
        [Offer("a", 0, 1), Offer("b", 30, 40)],  # only layers outside the range
    ],
    ids=["nothing", "tail", "head", "hole", "outside"],
)
def test_gaps_mean_no_route(offers: list[Offer]) -> None:
    assert plan_route(1, 30, offers, LOCAL) is None


def test_an_empty_range_needs_no_hops() -> None:
    assert plan_route(30, 30, [], LOCAL) == ()


def test_offers_are_clamped_to_the_requested_range() -> None:
    assert plan_route(1, 30, [Offer("a", 0, 40)], LOCAL) == (Hop("a", 1, 30),)


def test_this_node_is_preferred_over_an_idle_remote_node() -> None:
    offers = [Offer("remote", 1, 30, load=0), Offer(LOCAL, 1, 30, load=50)]
    assert plan_route(1, 30, offers, LOCAL) == (Hop(LOCAL, 1, 30),)


def test_local_layers_are_used_first_and_a_remote_node_takes_over_where_they_end() -> None:
    offers = [Offer("remote", 1, 30), Offer(LOCAL, 1, 10)]
    assert plan_route(1, 30, offers, LOCAL) == (Hop(LOCAL, 1, 10), Hop("remote", 10, 30))


def test_the_least_loaded_node_wins() -> None:
    offers = [Offer("busy", 1, 30, load=3), Offer("idle", 1, 30, load=0), Offer("medium", 1, 30, load=1)]
    assert plan_route(1, 30, offers, LOCAL) == (Hop("idle", 1, 30),)


def test_with_equal_load_the_node_reaching_furthest_wins() -> None:
    offers = [Offer("short", 1, 10), Offer("long", 1, 25), Offer("tail", 10, 30)]
    assert plan_route(1, 30, offers, LOCAL) == (Hop("long", 1, 25), Hop("tail", 25, 30))


def test_adjacent_segments_on_the_same_node_merge_into_one_hop() -> None:
    offers = [Offer("a", 1, 10), Offer("a", 10, 20), Offer("b", 20, 30)]
    assert plan_route(1, 30, offers, LOCAL) == (Hop("a", 1, 20), Hop("b", 20, 30))


def test_hops_on_the_same_node_separated_by_another_node_stay_separate() -> None:
    offers = [Offer("a", 1, 10), Offer("b", 10, 20), Offer("a", 20, 30)]
    assert plan_route(1, 30, offers, LOCAL) == (Hop("a", 1, 10), Hop("b", 10, 20), Hop("a", 20, 30))


def test_overlapping_segments_hand_over_where_the_first_ends() -> None:
    offers = [Offer("a", 1, 16), Offer("b", 10, 30)]
    assert plan_route(1, 30, offers, LOCAL) == (Hop("a", 1, 16), Hop("b", 16, 30))


def test_routes_always_chain_and_exist_exactly_when_the_layers_are_covered() -> None:
    generator = random.Random(7)
    nodes = ["a", "b", "c", LOCAL]
    for _ in range(500):
        offers = []
        for _ in range(generator.randint(0, 5)):
            start = generator.randint(0, 12)
            offers.append(
                Offer(
                    generator.choice(nodes), start, start + generator.randint(1, 8), generator.randint(0, 3)
                )
            )
        covered = {layer for offer in offers for layer in range(offer.start, offer.end)}
        hops = plan_route(1, 12, offers, LOCAL)
        if not set(range(1, 12)) <= covered:
            assert hops is None
            continue
        assert hops is not None
        assert hops[0].start == 1 and hops[-1].end == 12
        for before, after in itertools.pairwise(hops):
            assert before.end == after.start
            assert before.node_id != after.node_id  # adjacent hops on one node were merged
        for hop in hops:  # every layer of a hop is one its node really offers
            for layer in range(hop.start, hop.end):
                assert any(o.node_id == hop.node_id and o.start <= layer < o.end for o in offers)

"""Load-aware route choice in :func:`language_pipes.pipes.routing.plan_route`.

Several nodes may offer the same layers; a new sequence's route prefers this
node, then the least loaded node, then the one reaching furthest, and a route
may chain segments of different nodes.
"""

from __future__ import annotations

from language_pipes.pipes.routing import Hop, Offer, plan_route

FIRST, LAST = 1, 30
LOCAL = "end"


def test_the_less_loaded_replica_gets_the_new_sequence() -> None:
    offers = [Offer("a", 1, 30, load=3), Offer("b", 1, 30, load=1)]
    assert plan_route(FIRST, LAST, offers, LOCAL) == (Hop("b", 1, 30),)


def test_the_choice_follows_the_load_when_it_changes() -> None:
    busy_b = [Offer("a", 1, 30, load=0), Offer("b", 1, 30, load=2)]
    busy_a = [Offer("a", 1, 30, load=2), Offer("b", 1, 30, load=0)]
    assert plan_route(FIRST, LAST, busy_b, LOCAL) == (Hop("a", 1, 30),)
    assert plan_route(FIRST, LAST, busy_a, LOCAL) == (Hop("b", 1, 30),)


def test_a_local_segment_wins_over_an_idle_remote_one() -> None:
    offers = [Offer("a", 1, 30, load=0), Offer(LOCAL, 1, 30, load=9)]
    assert plan_route(FIRST, LAST, offers, LOCAL) == (Hop(LOCAL, 1, 30),)


def test_equal_load_prefers_the_node_that_reaches_furthest() -> None:
    offers = [Offer("half", 1, 16, load=0), Offer("full", 1, 30, load=0), Offer("rest", 16, 30, load=0)]
    assert plan_route(FIRST, LAST, offers, LOCAL) == (Hop("full", 1, 30),)


def test_load_beats_reach_and_the_route_chains_two_nodes() -> None:
    offers = [Offer("half", 1, 16, load=0), Offer("full", 1, 30, load=4), Offer("rest", 16, 30, load=0)]
    assert plan_route(FIRST, LAST, offers, LOCAL) == (Hop("half", 1, 16), Hop("rest", 16, 30))


def test_each_position_picks_its_least_loaded_replica() -> None:
    offers = [
        Offer("a1", 1, 16, load=5),
        Offer("a2", 1, 16, load=1),
        Offer("b1", 16, 30, load=0),
        Offer("b2", 16, 30, load=2),
    ]
    assert plan_route(FIRST, LAST, offers, LOCAL) == (Hop("a2", 1, 16), Hop("b1", 16, 30))


def test_a_busy_full_replica_is_entered_mid_range_when_the_first_half_is_idle() -> None:
    offers = [Offer("half", 1, 16, load=0), Offer("full", 1, 30, load=1)]
    assert plan_route(FIRST, LAST, offers, LOCAL) == (Hop("half", 1, 16), Hop("full", 16, 30))


def test_no_route_when_a_lost_node_leaves_a_gap_even_if_others_are_idle() -> None:
    offers = [Offer("a", 1, 16, load=0), Offer("c", 20, 30, load=0)]
    assert plan_route(FIRST, LAST, offers, LOCAL) is None


def test_removing_the_chosen_replica_falls_back_to_the_other() -> None:
    offers = [Offer("a", 1, 30, load=0), Offer("b", 1, 30, load=7)]
    chosen = plan_route(FIRST, LAST, offers, LOCAL)
    assert chosen == (Hop("a", 1, 30),)
    survivors = [offer for offer in offers if offer.node_id != "a"]
    assert plan_route(FIRST, LAST, survivors, LOCAL) == (Hop("b", 1, 30),)

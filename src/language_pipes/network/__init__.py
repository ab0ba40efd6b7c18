"""The peer-to-peer network: node identity, encrypted peer sessions and membership.

Nothing here knows about models. :class:`~language_pipes.network.peer_network.PeerNetwork`
is the entry point: it joins the network, keeps every peer's signed record, and
moves typed messages (a small header plus raw payload bytes) between nodes.
"""

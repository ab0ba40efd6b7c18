"""The dashboard's tabs: Home, Network, Models, Pipes, Jobs."""

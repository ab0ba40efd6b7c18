"""Model weights from peers: manifests, verified range transfers, serving with bounds."""

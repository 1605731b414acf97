"""Example cluster files (data only), installed as helix.clusters."""

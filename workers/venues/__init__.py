"""Exchange venues: the adapter interface, the paper exchange and the ccxt bridge."""

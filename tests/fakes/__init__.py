"""Fake provider servers on loopback that speak each provider's real wire format and check
its real authentication. End-to-end tests point worker processes at them."""
